"""Reading a folder of subject photos (or regularisation images) safely.

EXIF rotation is applied, RGBA is composited on white, grayscale becomes RGB; unreadable files are skipped with a
warning as long as enough remain. A folder written by ``subjectgen prepare`` carries a face mask per photo
(``<stem>.mask.png``) and a regular folder may carry captions (``<stem>.txt``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from subjectgen_diffusers.errors import SubjectgenError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
MASK_SUFFIX = ".mask.png"


class PhotoError(SubjectgenError):
    """The photo folder cannot be used; the message says what to change."""


class PhotoTooLargeError(PhotoError):
    """An image has more pixels than Pillow's decompression-bomb limit, so it is refused before it is decoded."""


@dataclass
class Photo:
    path: Path
    image: Image.Image
    mask: Image.Image | None = None
    caption: str | None = None


def to_rgb(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation, composite transparency on white, and return an RGB image."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Open one image fully (so truncated files fail here) and return it as upright RGB."""
    path = Path(path)
    try:
        with Image.open(path) as handle:
            handle.load()
            return to_rgb(handle)
    except Image.DecompressionBombError as error:
        # Pillow refuses to decode more than 2 x Image.MAX_IMAGE_PIXELS (about 179 million) pixels: such a file would
        # take gigabytes of memory, and no photo needs it. It is dropped like any other unusable photo.
        raise PhotoTooLargeError(f"{path} is too large to decode ({error}); downscale it below "
                                 f"{Image.MAX_IMAGE_PIXELS:,} pixels.") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise PhotoError(f"{path} is not a readable image ({error}).") from error


def is_mask_file(path: Path) -> bool:
    return path.name.endswith(MASK_SUFFIX)


def candidate_files(folder: Path) -> list[Path]:
    """Files in ``folder`` that could be photos (masks, captions and hidden files excluded), sorted by name."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and not is_mask_file(p) and p.suffix.lower() != ".txt"
        and p.suffix.lower() not in {".json", ".jsonl", ".md"}
    )


def read_manifest_prompts(folder: Path) -> dict[str, str]:
    """``file -> prompt`` from a ``manifest.jsonl`` (as written by ``subjectgen regularize``), if the folder has one."""
    manifest = folder / "manifest.jsonl"
    if not manifest.is_file():
        return {}
    prompts = {}
    for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            prompts[entry["file"]] = entry["prompt"]
        except (json.JSONDecodeError, KeyError, TypeError):
            logger.warning("%s line %d is not a manifest entry with `file` and `prompt`; ignored", manifest, number)
    return prompts


def no_images_message(what: str, folder: Path) -> str:
    """Why ``folder`` gives no photo: empty, or only files that are not images (said with their count)."""
    others = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not others:
        return f"{what} {folder} has no files: put the images (jpg, png, webp) in it."
    what_they_are = "1 file that is not an image" if len(others) == 1 else f"{len(others)} files that are not images"
    return (f"{what} {folder} has no images: {what_they_are} ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); "
            "put the images (jpg, png, webp) in it.")


def check_folder(folder: str | Path, what: str = "--photos") -> Path:
    folder = Path(folder)
    if not folder.exists():
        raise PhotoError(f"{what} {folder} does not exist: pass a folder of images.")
    if not folder.is_dir():
        raise PhotoError(f"{what} {folder} is not a folder: pass a folder of images.")
    if not candidate_files(folder):
        raise PhotoError(no_images_message(what, folder))
    return folder


def load_photo_folder(
    folder: str | Path,
    *,
    what: str = "--photos",
    resolution: int | None = None,
    min_count: int = 1,
) -> list[Photo]:
    """Load every readable image in ``folder``; skip unreadable ones with a warning, fail if too few remain."""
    folder = check_folder(folder, what)
    manifest_captions = read_manifest_prompts(folder)
    photos: list[Photo] = []
    skipped: list[str] = []
    for path in candidate_files(folder):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(f"{path.name} (not an image file type)")
            continue
        try:
            image = load_image(path)
        except PhotoError as error:
            skipped.append(f"{path.name} ({error.__cause__})")
            continue
        mask_path = path.with_name(path.stem + MASK_SUFFIX)
        mask = Image.open(mask_path).convert("L") if mask_path.is_file() else None
        caption_path = path.with_suffix(".txt")
        caption = caption_path.read_text(encoding="utf-8").strip() if caption_path.is_file() else None
        caption = manifest_captions.get(path.name, caption)
        photos.append(Photo(path, image, mask, caption))
    for entry in skipped:
        logger.warning("%s: skipping %s", what, entry)
    if len(photos) < min_count:
        raise PhotoError(
            f"{what} {folder}: {len(photos)} readable image(s), at least {min_count} needed"
            + (f"; skipped {', '.join(skipped)}" if skipped else "")
            + ". Add photos (jpg, png, webp) or fix the unreadable ones."
        )
    if resolution:
        small = [p.path.name for p in photos if min(p.image.size) < resolution]
        if small:
            logger.warning(
                "%s: %d photo(s) smaller than --resolution %d will be upscaled: %s",
                what, len(small), resolution, ", ".join(small),
            )
    return photos
