"""Training captions: the instance prompt with the token filled in, optionally wrapped in varied caption templates
(Cross Initialization trains on templates around "face of {} person", Pang et al., CVPR 2024), and Custom
Diffusion's zoom prefixes from the random-rescale augmentation."""

from __future__ import annotations

import random

from training.token_rows import prompt_with_token

# Our own wording of the usual textual-inversion style templates; "{}" is the instance phrase.
CAPTION_TEMPLATES = (
    "a photo of the {}",
    "a close-up photo of the {}",
    "a cropped photo of the {}",
    "a good photo of the {}",
    "a bright photo of the {}",
    "a dark photo of the {}",
    "a rendition of the {}",
    "a portrait showing the {}",
    "the {} in a photo",
    "a clean photo of the {}",
    "a nice photo of the {}",
    "a small photo of the {}",
    "a large photo of the {}",
    "a blurry photo of the {}",
)


class CaptionMaker:
    """Builds instance captions; which template a sample gets is drawn from the step's own RNG."""

    def __init__(self, prompt: str, token: str, num_vectors: int, templates: bool):
        self.phrase = prompt_with_token(prompt, token, num_vectors)
        self.token, self.num_vectors = token, num_vectors
        self.templates = templates

    def caption(self, rng: random.Random, prefix: str = "", photo_caption: str | None = None) -> str:
        if photo_caption and "{}" in photo_caption:
            text = prompt_with_token(photo_caption, self.token, self.num_vectors)
        elif self.templates:
            text = rng.choice(CAPTION_TEMPLATES).format(self.phrase)
        else:
            text = self.phrase
        return prefix + text

    def plain(self) -> str:
        return self.phrase
