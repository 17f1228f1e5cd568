"""The toy world's identity encoder (registered as ``toy`` in :mod:`subjectgen_training.evaluation.identity`).

The "embedding" of an image is what :func:`subjectgen_training.toy.detectors.read_face` reads about the face's fixed traits
(skin, hair colour, hair style, eye colour) and its unnamed mark, as integer codes; the similarity of two readings
is the toy likeness: 0.5 when the marks agree (colour and place, both present), plus 0.5 times the fraction of skin,
hair colour and hair style that agree (eye colour is carried in the code but not scored: see the detectors). An image in which no head is found has no embedding (identity 0 under the Celeb Basis
protocol the evaluation follows, and it counts against the detection rate).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from . import world
from .detectors import FaceReading, read_face

UNKNOWN = -1
SCORED_TRAITS = (0, 1, 2)  # skin, hair colour, hair style
BALD = -2


def _code(value: str | None, names) -> int:
    return list(names).index(value) if value is not None else UNKNOWN


def encode_reading(reading: FaceReading) -> np.ndarray:
    """``[skin, hair colour, hair style, eye colour, mark colour, mark place]`` codes; -1 = not read."""
    hair_colour = BALD if reading.hair_style == "bald" else _code(reading.hair_colour, world.HAIR_COLOURS)
    mark_colour, mark_place = reading.mark if reading.mark is not None else (None, None)
    return np.array([
        _code(reading.skin, world.SKINS), hair_colour, _code(reading.hair_style, world.HAIR_STYLES),
        _code(reading.eye_colour, world.EYE_COLOURS), _code(mark_colour, world.MARK_COLOURS),
        _code(mark_place, world.MARK_PLACES),
    ], dtype=np.int64)


def encode_subject(subject: world.ToySubject) -> np.ndarray:
    """The code a perfect picture of ``subject`` reads as."""
    return encode_reading(FaceReading(
        background=None, skin=subject.skin, hair_colour=None if subject.hair_style == "bald" else subject.hair_colour,
        hair_style=subject.hair_style, eye_colour=subject.eye_colour, accessory="none", mark=tuple(subject.mark),
        head_found=True,
    ))


def code_parts(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """The two halves of the toy likeness: ``hidden_mark`` (1 when both codes read the same mark, colour and place)
    and ``traits`` (the fraction of skin, hair colour and hair style that agree); unread traits never agree."""
    a, b = np.asarray(a), np.asarray(b)
    traits = [(a[i] == b[i]) and a[i] != UNKNOWN for i in SCORED_TRAITS]
    mark = bool(a[4] == b[4] and a[5] == b[5] and a[4] != UNKNOWN and a[5] != UNKNOWN)
    return {"hidden_mark": float(mark), "traits": float(np.mean(traits))}


def code_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Toy likeness of two codes, in [0, 1]: half the hidden mark, half the traits."""
    parts = code_parts(a, b)
    return 0.5 * parts["hidden_mark"] + 0.5 * parts["traits"]


class ToyIdentity:
    """Identity encoder for toy-world images: ``embed`` reads the face, ``similarity`` is the toy likeness."""

    name = "toy"
    measure = ("toy likeness: 0.5 x the hidden mark (colour and place) + 0.5 x the share of skin, hair colour and "
               "hair style that match, read by the pixel rules")

    def embed(self, image: Image.Image) -> np.ndarray | None:
        reading = read_face(image)
        return encode_reading(reading) if reading.head_found else None

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        return code_similarity(a, b)

    def parts(self, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        """The likeness split into ``hidden_mark`` and ``traits`` (reported beside the identity score)."""
        return code_parts(a, b)
