"""Where a subject's photos come from: a folder, or a named source written on demand (``<source>:<spec>``).

* ``builtin:astronaut``: sample photos cropped from scikit-image's astronaut (:mod:`subjectgen_training.data.sample_photos`).
* ``toy:<subject spec>``: a toy-world face photographed a few times (:func:`subjectgen_training.toy.subject_photos.write_spec_photos`;
  e.g. ``toy:shipped``, ``toy:seed=101``, ``toy:skin=dark,hair_colour=black,mark=lime/chin``).

A source is registered as ``name -> "module:function"``, imported only when used; the function is called as
``function(spec, folder)`` and writes the photos (with their caption files, if any) into ``folder``. Any other value
is a folder of photos.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from subjectgen_diffusers.errors import SubjectgenError

PHOTO_SOURCES: dict[str, str] = {
    "builtin": "subjectgen_training.experiment.photo_sources:write_builtin_photos",
    "toy": "subjectgen_training.toy.subject_photos:write_spec_photos",
}


class PhotoSourceError(SubjectgenError):
    """A ``<source>:<spec>`` photo source is unknown or its spec is wrong; the message says what is allowed."""


def split_source(value: str) -> tuple[str, str] | None:
    """``("toy", "seed=3")`` for ``toy:seed=3``; ``None`` for a folder path."""
    name, colon, spec = str(value).partition(":")
    if not colon or name not in PHOTO_SOURCES:
        return None
    return name, spec


def is_photo_source(value: str) -> bool:
    return split_source(value) is not None


def photo_writer(name: str) -> Callable[[str, Path], object]:
    module_name, _, attr = PHOTO_SOURCES[name].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def write_source_photos(value: str, folder: str | Path) -> Path:
    """Write the photos that ``value`` (``<source>:<spec>``) names into ``folder``; return the folder."""
    parts = split_source(value)
    if parts is None:
        raise PhotoSourceError(f"{value!r} is not a photo source; known sources are "
                               f"{', '.join(f'{n}:' for n in sorted(PHOTO_SOURCES))} (anything else is a folder).")
    name, spec = parts
    photo_writer(name)(spec, Path(folder))
    return Path(folder)


def write_builtin_photos(spec: str, folder: Path) -> Path:
    """``builtin:astronaut``, the only built-in photo set."""
    if spec != "astronaut":
        raise PhotoSourceError(f"unknown built-in photos builtin:{spec}: the built-in set is builtin:astronaut.")
    from subjectgen_training.data.sample_photos import write_astronaut_photos

    return write_astronaut_photos(folder)
