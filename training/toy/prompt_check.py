"""Prompt-following in the toy world: does an image show what its prompt asks for?

The prompt's requests are read from its words ("on a blue background", "wearing a hat", "wearing glasses") and each
is checked by the pixel rules of :mod:`subjectgen_training.toy.detectors`. The score of an image is the fraction of its requests
that are met; a prompt that requests nothing checkable has no score (``None``), so it is left out of the means.
"""

from __future__ import annotations

import re

from PIL import Image

from . import world
from .detectors import read_face

_BACKGROUND = re.compile(r"\bon an? (\w+) background\b")


def requested(prompt: str) -> dict[str, str]:
    """``{"background": colour, "accessory": "hat" | "glasses"}``, for what the prompt names."""
    wants: dict[str, str] = {}
    match = _BACKGROUND.search(prompt.lower())
    if match and match.group(1) in world.BACKGROUNDS:
        wants["background"] = match.group(1)
    if re.search(r"\bwearing an? hat\b", prompt.lower()):
        wants["accessory"] = "hat"
    elif re.search(r"\bwearing glasses\b", prompt.lower()):
        wants["accessory"] = "glasses"
    return wants


def prompt_score(image: Image.Image, prompt: str) -> float | None:
    """Fraction of the prompt's checkable requests the image meets; ``None`` when it requests none."""
    wants = requested(prompt)
    if not wants:
        return None
    reading = read_face(image)
    return sum(getattr(reading, key) == value for key, value in wants.items()) / len(wants)


def prompt_checks(image: Image.Image, prompt: str) -> dict[str, float]:
    """Each request's outcome: ``{"background": 1.0, "hat": 0.0}`` (the accessory's check is named after it)."""
    wants = requested(prompt)
    if not wants:
        return {}
    reading = read_face(image)
    checks = {}
    if "background" in wants:
        checks["background"] = float(reading.background == wants["background"])
    if "accessory" in wants:
        checks[wants["accessory"]] = float(reading.accessory == wants["accessory"])
    return checks


class ToyPromptScorer:
    """The ``toy`` prompt scorer of :mod:`subjectgen_training.evaluation.prompt_scorers`: prompt-following by pixel rules."""

    name = "toy"
    label = "prompt-following"

    def score(self, images, prompts, references):
        scores = []
        for image, prompt in zip(images, prompts):
            checks = prompt_checks(image, prompt) if prompt else {}
            scores.append({"prompt_following": sum(checks.values()) / len(checks) if checks else None,
                           "prompt_checks": checks or None})
        return scores
