"""Uploaded photos: images only, at most 20 MB each and 50 per subject, Pillow's decompression-bomb limit, safe names.

A refused file never reaches the subject's folder; the caller gets one line per file saying why, for the page.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from subjectgen_diffusers.errors import SubjectgenError

MAX_BYTES = 20 * 1024 * 1024
MAX_FILES = 50
IMAGE_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO"}
SUFFIX = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif", "GIF": ".gif"}


class UploadError(SubjectgenError):
    """No usable upload; the message says what to change."""


def safe_name(name: str, fallback: str = "photo") -> str:
    """A file name without folders, leading dots or characters other than letters, digits, ``-``, ``_`` and ``.``."""
    stem = Path(str(name).replace("\\", "/")).name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).lstrip("._-")[:80]
    return stem or fallback


def safe_subject_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", (name or "").strip()).strip("-")[:40]
    if not cleaned:
        raise UploadError("give the subject a name (letters, digits, - and _).")
    return cleaned


@dataclass
class UploadResult:
    saved: list[Path] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (file name, why)


def check_image(path: Path) -> str | None:
    """Why ``path`` is refused, or ``None`` when it is an image within the limits (checked without decoding pixels)."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        return f"{size / 2**20:.1f} MB is over the {MAX_BYTES // 2**20} MB limit"
    try:
        with Image.open(path) as image:  # reads the header only; Pillow raises on a decompression bomb here
            image_format = image.format
            image.verify()
    except Image.DecompressionBombError:
        return f"more pixels than Pillow's decompression-bomb limit ({Image.MAX_IMAGE_PIXELS:,})"
    except Exception:  # noqa: BLE001 - anything Pillow cannot open is "not an image"
        return "not an image (jpg, png, webp, bmp, tiff or gif)"
    if image_format not in IMAGE_FORMATS:
        return f"{image_format} images are not accepted (jpg, png, webp, bmp, tiff or gif)"
    return None


def store_uploads(files: list[str | Path], folder: Path, *, already: int = 0) -> UploadResult:
    """Copy the acceptable ``files`` into ``folder`` under sanitised, unique names (captions beside them kept)."""
    result = UploadResult()
    folder.mkdir(parents=True, exist_ok=True)
    used = {p.name for p in folder.iterdir()}
    for file in files:
        path = Path(file)
        name = safe_name(path.name)
        why = check_image(path)
        if why is None and already + len(result.saved) >= MAX_FILES:
            why = f"more than {MAX_FILES} photos for one subject"
        if why is not None:
            result.refused.append((name, why))
            continue
        with Image.open(path) as image:
            suffix = SUFFIX[image.format]
        stem, number = Path(name).stem, 2
        target = folder / f"{stem}{suffix}"
        while target.name in used:
            target, number = folder / f"{stem}_{number}{suffix}", number + 1
        used.add(target.name)
        shutil.copyfile(path, target)
        result.saved.append(target)
    return result
