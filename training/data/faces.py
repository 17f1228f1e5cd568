"""Face detection, landmarks and identity descriptors with dlib, loaded once per process.

* Detection: dlib's HOG + linear SVM frontal face detector (Dalal & Triggs 2005 features; King, "Max-Margin Object
  Detection", 2015), run through ``detector.run`` so each box carries its SVM score. With one upsampling step the
  detector can also fire on small face-like patches (a badge, a logo), so boxes are returned most confident first and
  callers take the first.
* Landmarks: dlib's 5- and 68-point shape predictors (Kazemi & Sullivan, "One Millisecond Face Alignment with an
  Ensemble of Regression Trees", CVPR 2014).
* Identity: dlib's 128-d ResNet face descriptor (``dlib_face_recognition_resnet_model_v1``, a ResNet-29 trained with a
  metric loss; 99.38% on LFW). Two photos of one person lie closer than about 0.6 in Euclidean distance
  (:func:`identity_distance`); cosine similarity of the raw vectors separates people poorly.

The model files ship in the ``face-recognition-models`` package; they are located with ``importlib.util.find_spec``
so its ``pkg_resources``-based helpers are never imported. Both packages are the ``face`` extra.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from subjectgen_diffusers.errors import SubjectgenError

FACE_EXTRA_HINT = 'pip install "subjectgen-diffusers[face]"  (that is: pip install dlib-bin face-recognition-models)'
MODEL_FILES = {
    "landmarks_5": "shape_predictor_5_face_landmarks.dat",
    "landmarks_68": "shape_predictor_68_face_landmarks.dat",
    "descriptor": "dlib_face_recognition_resnet_model_v1.dat",
}
DESCRIPTOR_SIZE = 128
SAME_PERSON_DISTANCE = 0.6


class FaceDependencyError(SubjectgenError):
    """dlib or its model files are missing; the message says what to install."""


@dataclass(frozen=True)
class FaceBox:
    """A detected face in pixel coordinates of the image it was found in (``right``/``bottom`` exclusive)."""

    left: int
    top: int
    right: int
    bottom: int
    score: float

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def area(self) -> int:
        return max(self.width, 0) * max(self.height, 0)

    @property
    def center(self) -> tuple[float, float]:
        return ((self.left + self.right) / 2.0, (self.top + self.bottom) / 2.0)

    def to_dict(self) -> dict:
        return {"left": self.left, "top": self.top, "right": self.right, "bottom": self.bottom,
                "score": round(float(self.score), 4)}


def import_dlib():
    """Import dlib or raise :class:`FaceDependencyError` naming the extra to install."""
    try:
        import dlib
    except ImportError as error:
        raise FaceDependencyError(f"face detection needs dlib, which is not installed: {FACE_EXTRA_HINT}.") from error
    return dlib


def face_model_dir() -> Path:
    """The folder holding dlib's model files from the ``face-recognition-models`` package (without importing it)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise FaceDependencyError(
            f"face landmarks and descriptors need the face-recognition-models package, which is not installed: "
            f"{FACE_EXTRA_HINT}."
        )
    folder = Path(spec.origin).parent / "models"
    missing = [name for name in MODEL_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise FaceDependencyError(
            f"face-recognition-models at {folder} lacks {', '.join(missing)}; reinstall it: "
            f"pip install --force-reinstall face-recognition-models"
        )
    return folder


def as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """A contiguous uint8 HxWx3 array, as dlib requires."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image, got an array of shape {array.shape} and dtype {array.dtype}")
    return np.ascontiguousarray(array)


class FaceAnalyzer:
    """dlib's detector, landmark predictors and descriptor network, loaded once and reused.

    ``upsample``: how often the detector upsamples the image (1 finds faces down to about 40 px).
    ``max_side``: images whose longer side exceeds this are downscaled for detection only (boxes are mapped back),
    which keeps a 12-megapixel phone photo under a second.
    ``threshold``: added to the SVM's decision threshold (negative values find more, less certain faces).
    """

    def __init__(self, *, upsample: int = 1, max_side: int = 1024, threshold: float = 0.0) -> None:
        if upsample < 0:
            raise SubjectgenError(f"upsample must be >= 0, got {upsample}.")
        if max_side < 64:
            raise SubjectgenError(f"max_side must be at least 64 pixels, got {max_side}.")
        dlib = import_dlib()
        folder = face_model_dir()
        self.upsample = upsample
        self.max_side = max_side
        self.threshold = threshold
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._landmarks_5 = dlib.shape_predictor(str(folder / MODEL_FILES["landmarks_5"]))
        self._landmarks_68 = None  # loaded on first use (95 MB)
        self._model_dir = folder
        self._encoder = dlib.face_recognition_model_v1(str(folder / MODEL_FILES["descriptor"]))

    def detect(self, image: Image.Image) -> list[FaceBox]:
        """Every face the detector finds, most confident first, clipped to the image."""
        array = as_rgb_array(image)
        height, width = array.shape[:2]
        factor = min(1.0, self.max_side / max(height, width))
        if factor < 1.0:
            small = Image.fromarray(array).resize((round(width * factor), round(height * factor)), Image.BILINEAR)
            array = np.asarray(small)
        rects, scores, _ = self._detector.run(array, self.upsample, self.threshold)
        boxes = []
        for rect, score in zip(rects, scores):
            left = max(0, int(round(rect.left() / factor)))
            top = max(0, int(round(rect.top() / factor)))
            right = min(width, int(round((rect.right() + 1) / factor)))
            bottom = min(height, int(round((rect.bottom() + 1) / factor)))
            if right > left and bottom > top:
                boxes.append(FaceBox(left, top, right, bottom, float(score)))
        return sorted(boxes, key=lambda box: box.score, reverse=True)

    def _rectangle(self, box: FaceBox):
        return self._dlib.rectangle(int(box.left), int(box.top), int(box.right) - 1, int(box.bottom) - 1)

    def landmarks(self, image: Image.Image, box: FaceBox, points: int = 68) -> np.ndarray:
        """Landmark coordinates ``[points, 2]`` (x, y) for the face in ``box``; ``points`` is 5 or 68."""
        if points not in (5, 68):
            raise SubjectgenError(f"points must be 5 or 68, got {points}.")
        if points == 68 and self._landmarks_68 is None:
            self._landmarks_68 = self._dlib.shape_predictor(str(self._model_dir / MODEL_FILES["landmarks_68"]))
        predictor = self._landmarks_5 if points == 5 else self._landmarks_68
        shape = predictor(as_rgb_array(image), self._rectangle(box))
        return np.array([(part.x, part.y) for part in shape.parts()], dtype=np.float32)

    def descriptor(self, image: Image.Image, box: FaceBox, *, jitters: int = 0) -> np.ndarray:
        """The 128-d identity descriptor of the face in ``box`` (aligned on the 5-point landmarks)."""
        array = as_rgb_array(image)
        shape = self._landmarks_5(array, self._rectangle(box))
        vector = self._encoder.compute_face_descriptor(array, shape, jitters)
        return np.asarray(vector, dtype=np.float64)

    def best_descriptor(self, image: Image.Image) -> np.ndarray | None:
        """The descriptor of the most confident face, or None when no face is found."""
        boxes = self.detect(image)
        return self.descriptor(image, boxes[0]) if boxes else None


def identity_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between two 128-d descriptors; below about 0.6 means the same person."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != (DESCRIPTOR_SIZE,) or b.shape != (DESCRIPTOR_SIZE,):
        raise ValueError(f"descriptors must have shape ({DESCRIPTOR_SIZE},), got {a.shape} and {b.shape}")
    return float(np.linalg.norm(a - b))
