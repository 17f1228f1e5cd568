"""Training captions: the instance prompt with the token filled in, optionally drawn from a template list, plus
Custom Diffusion's zoom prefixes from the random-rescale augmentation.

- Without templates (Custom Diffusion): the prompt as is, the zoom prefix in front ("a far away photo of a <new1>
  person"), as diffusers' ``examples/custom_diffusion/train_custom_diffusion.py`` (``CustomDiffusionDataset``).
- With templates (Cross Initialization, Pang et al., CVPR 2024): a template drawn uniformly from the list of
  lyuPang/CrossInitialization ``textual_inversion_dataset.py`` (``imagenet_templates_small``, 81 entries with their
  repeats, the textual-inversion list), formatted with the instance phrase "face of {} person". A zoom prefix then
  goes *inside* the template, as an adjective of the phrase ("a photo of a far away face of <tok> person"), so the
  caption stays grammatical (cd+cr with random rescale).
"""

from __future__ import annotations

import random

from subjectgen_training.models.token_rows import prompt_with_token

# The reference's template list, entry for entry (its repeats kept, so the draw has the same distribution): 27
# patterns, written once each for "photo", "illustration" and "depiction" where the pattern names the medium.
_PATTERNS = (
    "a {medium} of a {{}}", "a rendering of a {{}}", "a cropped photo of the {{}}", "the photo of a {{}}",
    "a {medium} of a clean {{}}", "a {medium} of a dirty {{}}", "a dark photo of the {{}}", "a {medium} of my {{}}",
    "a {medium} of the cool {{}}", "a close-up photo of a {{}}", "a bright photo of the {{}}",
    "a cropped photo of a {{}}", "a {medium} of the {{}}", "a good photo of the {{}}", "a {medium} of one {{}}",
    "a close-up photo of the {{}}", "a rendition of the {{}}", "a {medium} of the clean {{}}", "a rendition of a {{}}",
    "a {medium} of a nice {{}}", "a good photo of a {{}}", "a {medium} of the nice {{}}", "a {medium} of the small {{}}",
    "a {medium} of the weird {{}}", "a {medium} of the large {{}}", "a {medium} of a cool {{}}",
    "a {medium} of a small {{}}",
)
_MEDIA = (("photo", "a photo"), ("illustration", "an illustration"), ("depiction", "a depiction"))


def _expand() -> tuple[str, ...]:
    templates = []
    for medium, with_article in _MEDIA:
        for pattern in _PATTERNS:
            text = pattern.format(medium=medium)
            if "{medium}" in pattern and pattern.startswith("a {medium}"):
                text = with_article + text[len("a " + medium):]
            templates.append(text)
    return tuple(templates)


CAPTION_TEMPLATES: tuple[str, ...] = _expand()


def prefix_as_modifier(prefix: str) -> str:
    """``"a far away "`` -> ``"far away"``: a zoom prefix as an adjective that fits after a template's article."""
    words = prefix.strip()
    return words[2:] if words.startswith("a ") else words


class CaptionMaker:
    """Builds instance captions; which template a sample gets is drawn from the step's own RNG."""

    def __init__(self, prompt: str, token: str, num_vectors: int, templates: bool):
        self.phrase = prompt_with_token(prompt, token, num_vectors)
        self.token, self.num_vectors = token, num_vectors
        self.templates = templates

    def caption(self, rng: random.Random, prefix: str = "", photo_caption: str | None = None) -> str:
        if photo_caption and "{}" in photo_caption:
            return prefix + prompt_with_token(photo_caption, self.token, self.num_vectors)
        if not self.templates:
            return prefix + self.phrase
        modifier = prefix_as_modifier(prefix)
        phrase = f"{modifier} {self.phrase}" if modifier else self.phrase
        return rng.choice(CAPTION_TEMPLATES).format(phrase)

    def plain(self) -> str:
        return self.phrase
