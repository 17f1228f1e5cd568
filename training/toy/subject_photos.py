"""Write a toy subject's "photos" as a folder the trainer reads (``subjectgen train --photos``).

Each photo is ``photo_<i>.png`` with a caption file ``photo_<i>.txt`` that names only what changes between photos
(the background) and leaves ``{}`` where the trainer puts the new token -- the face's own attributes, and of course
its mark, are never named, so the token must learn them. ``subject.json`` records the ground truth for evaluation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from subjectgen_diffusers.atomic_io import atomic_save_image, atomic_write_json, atomic_write_text

from .world import DEFAULT_SUBJECT, ToySubject, caption_for, render

SUBJECT_FILE = "subject.json"


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
