"""Face-aware preparation of subject photos: square crops around the face, face masks, and a report of what was dropped.

Each photo is EXIF-transposed and made RGB; dlib's HOG detector (:mod:`subjectgen_training.data.faces`) finds the faces and the most
confident one is the subject (the detector also fires, weakly, on small face-like patches such as a badge). A photo is
dropped, with the reason recorded, when it cannot be read, is too large to decode safely (more pixels than Pillow's
decompression-bomb limit), shows no face, shows another face of similar size and
confidence (which person is the subject?), or the face is smaller than ``min_face`` pixels (the crop would be an
upscaled blur). Kept photos become a square crop of ``(1 + 2 * margin)`` face widths centred on the face (shrunk and
shifted to stay inside the photo) resized to ``resolution``, plus a face mask (outline of the 68 landmarks (jaw line and
brows raised to cover the forehead); L mode, 255 = face) that trainers can use to weight the denoising loss, as in
face-focused personalisation (e.g. the masked diffusion loss of Avrahami et al., "Break-A-Scene", SIGGRAPH Asia 2023).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from subjectgen_diffusers.atomic_io import atomic_save_image, atomic_write_json, atomic_write_text
from subjectgen_diffusers.errors import SubjectgenError
from subjectgen_diffusers.strict_config import check_known_keys
from subjectgen_training.config_flags import option
from subjectgen_training.data.faces import FaceAnalyzer, FaceBox
from subjectgen_training.data.photos import MASK_SUFFIX, PhotoError, PhotoTooLargeError, candidate_files, load_image
from subjectgen_training.data.resolution import resolution_problem

logger = logging.getLogger(__name__)

REPORT_NAME = "prepare.json"
REASONS = {
    "unreadable": "unreadable file",
    "too_large": "image too large",
    "no_face": "no face",
    "several_faces": "several faces of similar size",
    "face_too_small": "face too small",
}


class PrepareError(SubjectgenError):
    """The photos cannot be prepared as asked; the message says what to change."""


@dataclass(kw_only=True)
class PrepareConfig:
    """What ``subjectgen prepare`` does (its arguments come from these fields)."""

    photos: Path = option(positional=True, help="folder of the subject's photos")
    out: Path = option(positional=True, help="folder for the crops, their face masks and prepare.json")
    resolution: int = option(512, metavar="R", help="side of the square crops in pixels, a positive multiple of 8")
    margin: float = option(1.0, metavar="M", help="space on each side of the face in face widths; the crop is 1 + 2M "
                           "faces wide")
    min_face: int = option(64, metavar="PX", help="drop photos whose face is narrower than this many pixels")
    similar_size: float = option(0.5, cli=False, help="another face at least this fraction of the subject's area ...")
    similar_score: float = option(0.5, cli=False, help="... and of its detector score makes the photo ambiguous")

    def __post_init__(self) -> None:
        self.photos, self.out = Path(self.photos), Path(self.out)
        problems = []
        if resolution_problem(self.resolution):
            problems.append(resolution_problem(self.resolution))
        if self.margin < 0:
            problems.append(f"--margin must be >= 0 (face widths on each side), got {self.margin}")
        if self.min_face < 1:
            problems.append(f"--min-face must be at least 1 pixel, got {self.min_face}")
        if not 0 < self.similar_size <= 1 or not 0 < self.similar_score <= 1:
            problems.append("similar_size and similar_score must lie in (0, 1]")
        if problems:
            raise PrepareError("; ".join(problems) + ".")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PrepareConfig":
        check_known_keys(cls, data, PrepareError, "prepare config")
        return cls(**data)


def square_crop(face: FaceBox, width: int, height: int, margin: float) -> tuple[int, int, int, int]:
    """A square (left, top, right, bottom) centred on the face, at most the photo's shorter side, inside the photo."""
    side = round(max(face.width, face.height) * (1 + 2 * margin))
    side = max(1, min(side, width, height))
    cx, cy = face.center
    left = min(max(round(cx - side / 2), 0), width - side)
    top = min(max(round(cy - side / 2), 0), height - side)
    return left, top, left + side, top + side


def face_polygon(landmarks: np.ndarray) -> np.ndarray:
    """Jaw line (points 0-16) and brows (17-26) raised by 40% of the brow-to-chin height to take in the forehead."""
    jaw, brows = landmarks[:17], landmarks[17:27]
    lift = 0.4 * (landmarks[8, 1] - brows[:, 1].min())
    raised = brows[::-1] - np.array([0.0, lift], dtype=np.float32)
    return np.concatenate([jaw, raised])


def face_mask(analyzer: FaceAnalyzer, image: Image.Image, face: FaceBox, crop: tuple[int, int, int, int],
              resolution: int) -> Image.Image:
    """The face region of the crop as an L-mode mask at ``resolution`` (255 = face)."""
    points = face_polygon(analyzer.landmarks(image, face, points=68))
    scale = resolution / (crop[2] - crop[0])
    shifted = (points - np.array(crop[:2], dtype=np.float32)) * scale
    mask = Image.new("L", (resolution, resolution), 0)
    ImageDraw.Draw(mask).polygon([tuple(p) for p in shifted.tolist()], fill=255)
    return mask


def judge_faces(faces: list[FaceBox], config: PrepareConfig) -> tuple[FaceBox | None, str | None, str]:
    """The subject's face, or None with a reason code and a detail for the report."""
    if not faces:
        return None, "no_face", "the face detector found no face; use a photo where the face is visible and frontal"
    subject = faces[0]
    rivals = [f for f in faces[1:]
              if f.area >= config.similar_size * subject.area and f.score >= config.similar_score * subject.score]
    if rivals:
        return None, "several_faces", (f"{1 + len(rivals)} faces of similar size; crop the photo to the subject "
                                       "or leave it out")
    if subject.width < config.min_face:
        return None, "face_too_small", (f"face is {subject.width} px wide, --min-face is {config.min_face}; "
                                        "use a closer or larger photo")
    return subject, None, ""


def prepare_photo(path: Path, analyzer: FaceAnalyzer, config: PrepareConfig, stem: str) -> dict[str, Any]:
    """Prepare one photo; return its report entry (and write the crop and mask when it is kept)."""
    entry: dict[str, Any] = {"file": path.name}
    try:
        image = load_image(path)
    except PhotoTooLargeError as error:
        return {**entry, "status": "dropped", "reason": "too_large", "detail": str(error.__cause__ or error)}
    except PhotoError as error:
        return {**entry, "status": "dropped", "reason": "unreadable", "detail": str(error.__cause__ or error)}
    faces = analyzer.detect(image)
    entry["faces_found"] = len(faces)
    face, reason, detail = judge_faces(faces, config)
    if face is None:
        return {**entry, "status": "dropped", "reason": reason, "detail": detail}
    crop = square_crop(face, image.width, image.height, config.margin)
    side = crop[2] - crop[0]
    cropped = image.crop(crop).resize((config.resolution, config.resolution), Image.LANCZOS)
    mask = face_mask(analyzer, image, face, crop, config.resolution)
    output, mask_name = f"{stem}.png", f"{stem}{MASK_SUFFIX}"
    atomic_save_image(config.out / output, cropped)
    atomic_save_image(config.out / mask_name, mask)
    caption = path.with_suffix(".txt")
    if caption.is_file():
        atomic_write_text(config.out / f"{stem}.txt", caption.read_text(encoding="utf-8"))
    return {**entry, "status": "kept", "output": output, "mask": mask_name, "face": face.to_dict(),
            "crop": list(crop), "upscale": round(config.resolution / side, 3)}


def unique_stem(path: Path, used: set[str]) -> str:
    stem, number = path.stem, 2
    while stem in used:
        stem, number = f"{path.stem}_{number}", number + 1
    used.add(stem)
    return stem


def remove_previous_outputs(out: Path) -> None:
    """Delete the crops, masks and captions a previous run listed, so a re-run never leaves stale photos behind."""
    import json

    report = out / REPORT_NAME
    if not report.is_file():
        return
    try:
        entries = json.loads(report.read_text(encoding="utf-8")).get("photos", [])
    except (json.JSONDecodeError, AttributeError):
        return
    for entry in entries:
        for key in ("output", "mask"):
            if isinstance(entry, dict) and isinstance(entry.get(key), str):
                (out / Path(entry[key]).name).unlink(missing_ok=True)
        if isinstance(entry, dict) and isinstance(entry.get("output"), str):
            (out / (Path(entry["output"]).stem + ".txt")).unlink(missing_ok=True)


def prepare_photos(config: PrepareConfig, analyzer: FaceAnalyzer | None = None) -> dict[str, Any]:
    """Prepare every photo in ``config.photos`` into ``config.out``; return the report (also saved as prepare.json)."""
    from tqdm.auto import tqdm

    if not config.photos.is_dir():
        raise PrepareError(f"PHOTOS {config.photos} is not a folder: pass the folder holding the subject's photos.")
    if config.out.resolve() == config.photos.resolve():
        raise PrepareError("OUT must differ from PHOTOS: choose a new folder for the prepared photos.")
    files = candidate_files(config.photos)
    if not files:
        from subjectgen_training.data.photos import no_images_message

        raise PrepareError(no_images_message("PHOTOS", config.photos))
    analyzer = analyzer or FaceAnalyzer()
    config.out.mkdir(parents=True, exist_ok=True)
    remove_previous_outputs(config.out)
    used: set[str] = set()
    entries = [prepare_photo(path, analyzer, config, unique_stem(path, used))
               for path in tqdm(files, desc="preparing photos", unit="photo")]
    kept = sum(e["status"] == "kept" for e in entries)
    report = {
        "photos_dir": str(config.photos),
        "resolution": config.resolution,
        "margin": config.margin,
        "min_face": config.min_face,
        "kept": kept,
        "dropped": len(entries) - kept,
        "photos": entries,
    }
    atomic_write_json(config.out / REPORT_NAME, report)
    return report


def format_report(report: dict[str, Any]) -> str:
    """A human-readable table of the report."""
    width = max([len(e["file"]) for e in report["photos"]] + [4])
    lines = [f"{'file':<{width}}  result"]
    for entry in report["photos"]:
        if entry["status"] == "kept":
            lines.append(f"{entry['file']:<{width}}  kept -> {entry['output']} (face {entry['face']['right'] - entry['face']['left']} px, "
                         f"upscale x{entry['upscale']})")
        else:
            lines.append(f"{entry['file']:<{width}}  dropped: {REASONS[entry['reason']]} ({entry['detail']})")
    lines.append(f"{report['kept']} kept, {report['dropped']} dropped")
    return "\n".join(lines)
