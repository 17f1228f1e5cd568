"""Write a toy subject's "photos" as a folder the trainer reads (``subjectgen train --photos``).

Each photo is ``photo_<i>.png`` with a caption file ``photo_<i>.txt`` that names only what changes between photos
(the background) and leaves ``{}`` where the trainer puts the new token -- the face's own attributes, and of course
its mark, are never named, so the token must learn them. ``subject.json`` records the ground truth for evaluation.

The experiment runner reaches this through the photo source ``toy:<subject spec>``
(:mod:`subjectgen_training.experiment.photo_sources`). A spec is comma-separated ``key=value`` items:

* ``shipped`` (alone): the shipped face, :data:`subjectgen_training.toy.world.DEFAULT_SUBJECT` (the demo's subject);
* ``seed=N``: a face drawn from the world with :func:`subjectgen_training.toy.world.draw_subject`;
* any :class:`~subjectgen_training.toy.world.ToySubject` field (``skin=dark``, ``hair_style=long``, ``mark=lime/chin``) sets that
  trait (on top of the drawn face with ``seed=``, else on the shipped one);
* ``count=6`` (number of photos) and ``photo_seed=0`` (pose jitter and background order).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from subjectgen_diffusers.atomic_io import atomic_save_image, atomic_write_json, atomic_write_text
from subjectgen_diffusers.errors import SubjectgenError

from . import world
from .world import DEFAULT_SUBJECT, ToySubject, caption_for, render

SUBJECT_FILE = "subject.json"
PHOTO_OPTIONS = {"count": 6, "photo_seed": 0}
TRAIT_VALUES = {"skin": world.SKINS, "hair_colour": world.HAIR_COLOURS, "hair_style": world.HAIR_STYLES,
                "eye_colour": world.EYE_COLOURS, "mouth": world.MOUTHS, "head_shape": world.HEAD_SHAPES}


class ToySubjectSpecError(SubjectgenError):
    """A ``toy:`` subject spec is wrong; the message lists what is allowed."""


def parse_subject_spec(spec: str) -> tuple[ToySubject, int, int]:
    """``(subject, photo count, photo seed)`` of a ``toy:`` spec (the text after ``toy:``)."""
    items = [item.strip() for item in spec.split(",") if item.strip()]
    if items == ["shipped"]:
        return DEFAULT_SUBJECT, PHOTO_OPTIONS["count"], PHOTO_OPTIONS["photo_seed"]
    allowed = ["seed", *TRAIT_VALUES, "mark", *PHOTO_OPTIONS]
    values: dict[str, str] = {}
    for item in items:
        key, equals, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not equals or key not in allowed or key in values:
            raise ToySubjectSpecError(f"toy:{spec}: write `toy:shipped` or comma-separated key=value items, each key "
                                      f"once, from {allowed} (e.g. toy:seed=101 or toy:skin=dark,mark=lime/chin).")
        values[key] = value
    if not values:
        raise ToySubjectSpecError(f"toy:{spec} names no subject: write toy:shipped, toy:seed=N or traits.")
    try:
        subject = world.draw_subject(int(values["seed"])) if "seed" in values else DEFAULT_SUBJECT
        options = {key: int(values.get(key, default)) for key, default in PHOTO_OPTIONS.items()}
    except ValueError as error:
        raise ToySubjectSpecError(f"toy:{spec}: seed, count and photo_seed are integers ({error}).") from error
    traits = {}
    for key, names in TRAIT_VALUES.items():
        if key in values:
            if values[key] not in names:
                raise ToySubjectSpecError(f"toy:{spec}: {key} must be one of {list(names)}, got {values[key]!r}.")
            traits[key] = values[key]
    if "mark" in values:
        colour, _, place = values["mark"].partition("/")
        if colour not in world.MARK_COLOURS or place not in world.MARK_PLACES:
            raise ToySubjectSpecError(f"toy:{spec}: mark is <colour>/<place> with a colour from "
                                      f"{list(world.MARK_COLOURS)} and a place from {list(world.MARK_PLACES)}.")
        traits["mark"] = (colour, place)
    if options["count"] < 1:
        raise ToySubjectSpecError(f"toy:{spec}: count must be >= 1.")
    return dataclasses.replace(subject, **traits), options["count"], options["photo_seed"]


def subject_caption(spec, class_phrase: str) -> str:
    """``a {} cartoon face, on a blue background``."""
    return caption_for(spec, subject_phrase="{} " + class_phrase)


def write_subject_photos(folder: str | Path, subject: ToySubject = DEFAULT_SUBJECT, count: int = 6, seed: int = 0) -> Path:
    """Render ``count`` photos of ``subject`` (pose jitter, one background each) into ``folder``; return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for index, spec in enumerate(subject.photo_specs(count, seed)):
        atomic_save_image(folder / f"photo_{index}.png", render(spec))
        atomic_write_text(folder / f"photo_{index}.txt", subject_caption(spec, subject.class_phrase))
    atomic_write_json(folder / SUBJECT_FILE, {"subject": dataclasses.asdict(subject), "count": count, "seed": seed})
    return folder


def write_spec_photos(spec: str, folder: str | Path) -> Path:
    """The ``toy:`` photo source: the photos of the subject ``spec`` names."""
    subject, count, seed = parse_subject_spec(spec)
    return write_subject_photos(folder, subject, count, seed)


def read_subject(folder: str | Path) -> ToySubject | None:
    """The subject whose photos ``folder`` holds (from its ``subject.json``); ``None`` for other folders."""
    import json

    path = Path(folder) / SUBJECT_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))["subject"]
    return ToySubject(**{**data, "mark": tuple(data["mark"])})
