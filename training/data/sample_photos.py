"""Sample subject photos built from a real photo that ships in a package: scikit-image's ``astronaut``
(Eileen Collins, NASA, public domain). Crops, mirror images and small rescales stand in for a person's 4-20 photos,
so the demo and the tiny experiment run offline. Reference photos for evaluation come from the same set.
"""

from __future__ import annotations

from pathlib import Path

from subjectgen_diffusers.atomic_io import atomic_save_image
from subjectgen_diffusers.errors import SubjectgenError

# (left, top, right, bottom) crops of the 512x512 astronaut around her face, and whether to mirror each
ASTRONAUT_VIEWS = (
    ((90, 0, 330, 240), False),
    ((110, 10, 310, 210), True),
    ((60, 0, 360, 300), False),
    ((100, 20, 300, 220), True),
    ((70, 0, 350, 280), True),
    ((120, 0, 320, 200), False),
)


def astronaut_image():
    """The astronaut photo as a PIL image; names the package to install when scikit-image is missing."""
    try:
        from skimage import data
    except ImportError as error:
        raise SubjectgenError(
            'the sample photos come from scikit-image: pip install scikit-image (or "subjectgen-diffusers[demo]").'
        ) from error
    from PIL import Image

    return Image.fromarray(data.astronaut())


def write_astronaut_photos(folder: str | Path, size: int = 256, count: int = len(ASTRONAUT_VIEWS)) -> Path:
    """Write ``count`` (at most 6) square photos of the astronaut into ``folder``; existing files are kept."""
    from PIL import ImageOps

    folder = Path(folder)
    photo = None
    for index, (box, mirror) in enumerate(ASTRONAUT_VIEWS[:count]):
        path = folder / f"astronaut_{index}.png"
        if path.is_file():
            continue
        photo = photo or astronaut_image()
        view = photo.crop(box).resize((size, size))
        atomic_save_image(path, ImageOps.mirror(view) if mirror else view)
    return folder
