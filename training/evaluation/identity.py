"""Identity encoders for the face-similarity score, registered by name and built once.

* ``dlib``: dlib's 128-d ResNet face descriptor (via :mod:`subjectgen_training.data.faces`), offline, from the ``face`` extra. Two
  photos of one person lie closer than ~0.6 in Euclidean distance, so the similarity is ``max(0, 1 - distance)``.
* ``arcface``: ArcFace (Deng et al., CVPR 2019) through insightface's ``buffalo_l`` pack, the identity metric of
  Celeb Basis (Yuan et al. 2023) and Cross Initialization (Pang et al. 2024); similarity is the cosine of the
  embeddings. insightface fetches its model files on first use, so it needs them on disk or network access.
* Other encoders join through an entry in :data:`BUILTIN_BACKENDS` (``"module:callable"``, imported only when
  chosen; the toy world's ``toy`` is one) or :meth:`IdentityRegistry.register` on a registry passed to evaluation.

An encoder exposes ``name``, ``embed(image) -> vector | None`` (the most confident face; None when no face is found)
and ``similarity(a, b) -> float`` (higher = more alike, 1 = identical).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from subjectgen_diffusers.errors import SubjectgenError


class IdentityEncoder(Protocol):
    name: str

    def embed(self, image: Image.Image) -> np.ndarray | None: ...

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float: ...


class IdentityBackendError(SubjectgenError):
    """The identity encoder is unknown or cannot be built; the message says what to install or pass."""


def dlib_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """``max(0, 1 - ||a - b||)`` for dlib descriptors: ~0.8 for the same person, below 0.4 for different people."""
    from subjectgen_training.data.faces import identity_distance

    return max(0.0, 1.0 - identity_distance(a, b))


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


class DlibIdentity:
    """dlib HOG detection + 128-d descriptor of the most confident face."""

    name = "dlib"
    measure = "max(0, 1 - Euclidean distance) of dlib 128-d descriptors; same person >= 0.4 (distance <= 0.6)"

    def __init__(self) -> None:
        from subjectgen_training.data.faces import FaceAnalyzer

        self.analyzer = FaceAnalyzer()

    def embed(self, image: Image.Image) -> np.ndarray | None:
        return self.analyzer.best_descriptor(image)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        return dlib_similarity(a, b)


class ArcfaceIdentity:
    """insightface's detector + ArcFace recognition model (``buffalo_l``), on CPU unless CUDA is available."""

    name = "arcface"
    measure = "cosine similarity of ArcFace (insightface buffalo_l) embeddings"

    def __init__(self, pack: str = "buffalo_l", root: str | Path | None = None) -> None:
        try:
            from insightface.app import FaceAnalysis
        except ImportError as error:
            raise IdentityBackendError(
                "--face-model arcface needs insightface and onnxruntime: pip install insightface onnxruntime "
                "(or use --face-model dlib, which works offline)."
            ) from error
        root = Path(root or Path.home() / ".insightface")
        try:
            self.app = FaceAnalysis(name=pack, root=str(root), allowed_modules=["detection", "recognition"])
            self.app.prepare(ctx_id=-1, det_size=(640, 640))
        except Exception as error:  # noqa: BLE001 - insightface raises plain exceptions when files are missing
            raise IdentityBackendError(
                f"cannot load insightface's {pack} models under {root} ({error}); download them once with network "
                "access (insightface does this on first use) or use --face-model dlib."
            ) from error

    def embed(self, image: Image.Image) -> np.ndarray | None:
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        faces = self.app.get(bgr)
        if not faces:
            return None
        best = max(faces, key=lambda face: float(face.det_score))
        return np.asarray(best.normed_embedding, dtype=np.float64)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        return cosine_similarity(a, b)


BUILTIN_BACKENDS: dict[str, str] = {
    "dlib": "subjectgen_training.evaluation.identity:DlibIdentity",
    "arcface": "subjectgen_training.evaluation.identity:ArcfaceIdentity",
    "toy": "subjectgen_training.toy.identity:ToyIdentity",
}


class IdentityRegistry:
    """Names -> factories of identity encoders; the built-in entries are imported only when asked for."""

    def __init__(self, entries: dict[str, str | Callable[[], IdentityEncoder]] | None = None) -> None:
        self._entries: dict[str, str | Callable[[], IdentityEncoder]] = dict(BUILTIN_BACKENDS if entries is None else entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def register(self, name: str, factory: Callable[[], IdentityEncoder]) -> None:
        self._entries[name] = factory

    def build(self, name: str) -> IdentityEncoder:
        if name not in self._entries:
            raise IdentityBackendError(f"unknown face model {name!r}: choose one of {self.names()} or `none`.")
        factory = self._entries[name]
        if isinstance(factory, str):
            module_name, _, attr = factory.partition(":")
            try:
                factory = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as error:
                raise IdentityBackendError(f"face model {name!r} is not available in this install ({error}).") from error
        return factory()


def build_identity_encoder(name: str, registry: IdentityRegistry | None = None) -> IdentityEncoder:
    """Build the encoder registered as ``name`` (in ``registry``, default: the built-in entries)."""
    return (registry or IdentityRegistry()).build(name)
