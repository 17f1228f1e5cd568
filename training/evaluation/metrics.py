"""Pure metric functions: identity score, CLIP scores and their aggregates (no models, no files).

Identity follows the protocol of Celeb Basis (Yuan et al. 2023, Sec. 4): the score of an image is the mean
similarity of its most confident face to the reference faces, and an image in which no face is detected scores 0
and counts against the face-detection rate. CLIP-T is the cosine similarity of an image with its prompt, CLIP-I the
mean cosine similarity with the reference photos (Custom Diffusion, Kumari et al. 2023). Standard deviations are
population standard deviations (ddof = 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

NO_FACE_IDENTITY = 0.0
PROTOCOL_NOTE = (
    "Celeb Basis protocol: an image in which no face is detected scores likeness (identity) 0 and counts in the "
    "face-detection rate; likeness means include those zeros."
)


def identity_score(
    embedding: np.ndarray | None,
    references: Sequence[np.ndarray],
    similarity: Callable[[np.ndarray, np.ndarray], float],
) -> float:
    """Mean similarity of one face to the reference faces; :data:`NO_FACE_IDENTITY` when no face was found."""
    if embedding is None:
        return NO_FACE_IDENTITY
    if not references:
        raise ValueError("identity_score needs at least one reference embedding")
    return float(np.mean([similarity(embedding, reference) for reference in references]))


def identity_parts(
    embedding: np.ndarray | None,
    references: Sequence[np.ndarray],
    parts: Callable[[np.ndarray, np.ndarray], dict[str, float]],
) -> dict[str, float] | None:
    """Each part of the similarity, averaged over the references like :func:`identity_score`; every part is
    :data:`NO_FACE_IDENTITY` when no face was found. ``None`` when there are no references."""
    if not references:
        return None
    if embedding is None:
        return dict.fromkeys(parts(references[0], references[0]), NO_FACE_IDENTITY)
    each = [parts(embedding, reference) for reference in references]
    return {key: float(np.mean([p[key] for p in each])) for key in each[0]}


def clip_text_scores(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> list[float]:
    """Row-wise cosine similarity of unit-norm image and text embeddings (image i with text i)."""
    if image_embeddings.shape != text_embeddings.shape:
        raise ValueError(f"need one text per image, got {tuple(image_embeddings.shape)} and {tuple(text_embeddings.shape)}")
    return (image_embeddings * text_embeddings).sum(-1).tolist()


def clip_image_scores(image_embeddings: torch.Tensor, reference_embeddings: torch.Tensor) -> list[float]:
    """Mean cosine similarity of each unit-norm image embedding with every reference embedding."""
    return (image_embeddings @ reference_embeddings.T).mean(-1).tolist()


def mean_std(values: Iterable[float | None]) -> dict[str, float] | None:
    """``{"mean", "std", "n"}`` of the values that are not None; None when there are none."""
    present = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not present:
        return None
    array = np.asarray(present)
    return {"mean": float(array.mean()), "std": float(array.std()), "n": len(present)}


def _keyed_mean_std(images: Sequence[dict[str, Any]], field: str) -> dict[str, dict[str, float]] | None:
    """:func:`mean_std` of every key of the per-image mapping ``field`` (e.g. ``identity_parts``), or None."""
    keys: list[str] = []
    for entry in images:
        for key in entry.get(field) or {}:
            if key not in keys:
                keys.append(key)
    if not keys:
        return None
    return {key: mean_std((entry.get(field) or {}).get(key) for entry in images) for key in keys}


def summarize(images: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate per-image results: count, face-detection rate, mean/std of identity, CLIP-T and CLIP-I; with a
    scorer or encoder that gives them, also of prompt-following, of each identity part and of each prompt check
    (a check's mean is the rate at which that request was met)."""
    detected = [entry["face_found"] for entry in images if entry.get("face_found") is not None]
    summary = {
        "count": len(images),
        "face_detection_rate": float(np.mean(detected)) if detected else None,
        "identity": mean_std(entry.get("identity") for entry in images),
        "clip_text": mean_std(entry.get("clip_text") for entry in images),
        "clip_image": mean_std(entry.get("clip_image") for entry in images),
    }
    if any("prompt_following" in entry for entry in images):
        summary["prompt_following"] = mean_std(entry.get("prompt_following") for entry in images)
    for field in ("identity_parts", "prompt_checks"):
        keyed = _keyed_mean_std(images, field)
        if keyed is not None:
            summary[field] = keyed
    return summary


def summarize_by(images: Sequence[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    """:func:`summarize` per distinct value of ``key`` (in first-seen order); entries without it go under ``""``."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for entry in images:
        groups.setdefault(entry.get(key) or "", []).append(entry)
    return {name: summarize(group) for name, group in groups.items()}
