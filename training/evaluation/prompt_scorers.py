"""Prompt scorers: does a generated image show what its prompt asks for? Registered by name and built once.

* ``clip``: CLIP-T, the cosine of the image's and the prompt's CLIP embeddings with the subject token replaced by a
  plain phrase, and CLIP-I, the mean cosine with the reference photos (Custom Diffusion, Kumari et al. 2023;
  Celeb Basis, Yuan et al. 2023) -- for real images (:mod:`subjectgen_training.evaluation.clip_score`).
* ``toy``: the toy world's pixel rules (:class:`subjectgen_training.toy.prompt_check.ToyPromptScorer`): the share of the
  prompt's requested background and accessory found in the image, with each request's own outcome.

A scorer exposes ``name``, ``label`` (the report's column title for its main score) and
``score(images, prompts, references) -> list[dict]``: one dict per image with any of ``clip_text``, ``clip_image``,
``prompt_following`` (floats or None) and ``prompt_checks`` (``{request: 0.0 | 1.0}``). Other scorers join through
:data:`BUILTIN_PROMPT_SCORERS` (``"module:callable"``, imported only when chosen).
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from PIL import Image

from subjectgen_diffusers.errors import SubjectgenError

SCORE_KEYS = ("clip_text", "clip_image", "prompt_following", "prompt_checks")


class PromptScorer(Protocol):
    name: str
    label: str

    def score(self, images: list[Image.Image], prompts: list[str | None],
              references: list[Image.Image]) -> list[dict[str, Any]]: ...


class PromptScorerError(SubjectgenError):
    """The prompt scorer is unknown or cannot be built; the message lists the known ones."""


class ClipPromptScorer:
    """CLIP-T with the prompt (subject token replaced by ``subject_phrase``) and CLIP-I with the references."""

    name = "clip"
    label = "CLIP-T (prompt)"

    def __init__(self, clip_model: str, subject_phrase: str, device: str = "cpu", batch_size: int = 16) -> None:
        from subjectgen_training.evaluation.clip_score import ClipEmbedder

        self.embedder = ClipEmbedder(clip_model, device=device, batch_size=batch_size)
        self.subject_phrase = subject_phrase

    def score(self, images, prompts, references):
        from subjectgen_training.evaluation import metrics
        from subjectgen_training.prompts import prompt_for_clip

        image_embeddings = self.embedder.embed_images(images)
        clip_image = metrics.clip_image_scores(image_embeddings, self.embedder.embed_images(references))
        clip_text: list[float | None] = [None] * len(images)
        with_prompt = [i for i, prompt in enumerate(prompts) if prompt]
        if with_prompt:
            texts = [prompt_for_clip(prompts[i], self.subject_phrase) for i in with_prompt]
            for i, value in zip(with_prompt, metrics.clip_text_scores(image_embeddings[with_prompt],
                                                                      self.embedder.embed_texts(texts))):
                clip_text[i] = value
        return [{"clip_text": t, "clip_image": c} for t, c in zip(clip_text, clip_image)]


BUILTIN_PROMPT_SCORERS: dict[str, str] = {
    "clip": "subjectgen_training.evaluation.prompt_scorers:ClipPromptScorer",
    "toy": "subjectgen_training.toy.prompt_check:ToyPromptScorer",
}


def build_prompt_scorer(name: str, *, clip_model: str, subject_phrase: str, device: str = "cpu",
                        batch_size: int = 16) -> PromptScorer | None:
    """The scorer registered as ``name`` (``None`` for ``none``, or for ``clip`` with ``clip_model: none``)."""
    if name == "none" or (name == "clip" and clip_model == "none"):
        return None
    if name not in BUILTIN_PROMPT_SCORERS:
        raise PromptScorerError(f"unknown prompt scorer {name!r}: choose one of {sorted(BUILTIN_PROMPT_SCORERS)} "
                                "or `none`.")
    module_name, _, attr = BUILTIN_PROMPT_SCORERS[name].partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    if name == "clip":
        return factory(clip_model, subject_phrase, device=device, batch_size=batch_size)
    return factory()
