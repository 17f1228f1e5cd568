"""The UI's work folder, laid out as the CLI writes it so a user can continue in a terminal::

    WORKDIR/subjects/NAME/photos/      the uploaded photos (sanitised names)
    WORKDIR/subjects/NAME/prepared/    `subjectgen prepare` output (crops, masks, prepare.json)
    WORKDIR/subjects/NAME/subject/     `subjectgen train --out`: subject files, train_config.json
    WORKDIR/subjects/NAME/subject.checkpoints/  its resumable checkpoints while a run is unfinished (Stop, Resume)
    WORKDIR/subjects/NAME/images/RUN/  `subjectgen generate --out`: images + manifest.jsonl (RUN/subject, RUN/base)
    WORKDIR/regularization/            `subjectgen regularize` output, shared by the subjects of one base
    WORKDIR/downloads/                 zips and exports made for the browser

On the shipped toy base the photos are 32 px cartoon faces that the real face detector cannot see; "prepare" then
checks each photo with the toy world's own head detector (``subjectgen_training.toy.detectors``) and writes the same
``prepare.json`` report, so the page shows kept and dropped photos with a reason either way.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from subjectgen_diffusers.atomic_io import atomic_save_image, atomic_write_json, atomic_write_text, make_staging_dir
from subjectgen_diffusers.errors import SubjectgenError

TOY_BASE = "toy-base"


class WorkdirError(SubjectgenError):
    """The work folder or a subject in it is not as expected; the message says what to do."""


def resolve_base(base: str) -> str:
    """``toy-base`` (the default) and every ``builtin:<name>`` are their folders; anything else is passed on unchanged."""
    from subjectgen_training.models.builtin_models import resolve_model

    return resolve_model(base)


def is_toy(base: str) -> bool:
    from subjectgen_training.toy.models import WEIGHTS

    return Path(resolve_base(base)).resolve() == (WEIGHTS / TOY_BASE).resolve()


@dataclass(frozen=True)
class SubjectPaths:
    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def photos(self) -> Path:
        return self.root / "photos"

    @property
    def prepared(self) -> Path:
        return self.root / "prepared"

    @property
    def subject(self) -> Path:
        return self.root / "subject"

    def images(self, run: str) -> Path:
        return self.root / "images" / run

    def is_trained(self) -> bool:
        return (self.subject / "subject_config.json").is_file()


class Workdir:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def subject(self, name: str) -> SubjectPaths:
        from .uploads import safe_subject_name

        return SubjectPaths(self.root / "subjects" / safe_subject_name(name))

    def subjects(self) -> list[SubjectPaths]:
        folder = self.root / "subjects"
        return sorted((SubjectPaths(p) for p in folder.iterdir() if p.is_dir()), key=lambda s: s.name) if folder.is_dir() else []

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    def regularization(self, model: str, lora: str | None = None) -> Path:
        """The shared class-image folder of one model (plus LoRA): ``regularization/<model>[+<lora>]``."""
        from .uploads import safe_name

        model = model.split(":")[-1] if model.startswith("builtin:") else model
        name = safe_name(Path(resolve_base(model)).name, "base")
        if lora:
            name += "+" + safe_name(Path(lora.split(":")[-1]).name, "lora")
        return self.root / "regularization" / name

    def inside(self, path: str | Path) -> bool:
        return Path(path).resolve().is_relative_to(self.root)


def toy_prepare(photos: Path, out: Path) -> dict[str, Any]:
    """The toy world's ``prepare``: keep the photos in which the toy head detector finds a head, at the world's size."""
    from PIL import Image

    from subjectgen_training.data.photos import PhotoError, PhotoTooLargeError, candidate_files, load_image
    from subjectgen_training.data.prepare import REPORT_NAME, remove_previous_outputs
    from subjectgen_training.toy.detectors import read_face
    from subjectgen_training.toy.world import SIZE

    out.mkdir(parents=True, exist_ok=True)
    remove_previous_outputs(out)
    entries = []
    for path in candidate_files(photos):
        entry: dict[str, Any] = {"file": path.name}
        try:
            image = load_image(path)
        except PhotoTooLargeError as error:
            entries.append({**entry, "status": "dropped", "reason": "too_large", "detail": str(error)})
            continue
        except PhotoError as error:
            entries.append({**entry, "status": "dropped", "reason": "unreadable", "detail": str(error.__cause__ or error)})
            continue
        if image.size != (SIZE, SIZE):
            image = image.resize((SIZE, SIZE), Image.LANCZOS)
        if not read_face(image).head_found:
            entries.append({**entry, "status": "dropped", "reason": "no_face",
                            "detail": "the toy head detector found no cartoon head"})
            continue
        output = f"{path.stem}.png"
        atomic_save_image(out / output, image)
        caption = path.with_suffix(".txt")
        if caption.is_file():
            atomic_write_text(out / f"{path.stem}.txt", caption.read_text(encoding="utf-8"))
        entries.append({**entry, "status": "kept", "output": output})
    kept = sum(e["status"] == "kept" for e in entries)
    report = {"photos_dir": str(photos), "resolution": SIZE, "detector": "toy", "kept": kept,
              "dropped": len(entries) - kept, "photos": entries}
    atomic_write_json(out / REPORT_NAME, report)
    return report


def prepare_subject(paths: SubjectPaths, base: str) -> dict[str, Any]:
    """Run ``subjectgen prepare`` (or the toy check on the toy base) from ``photos/`` into ``prepared/``."""
    if is_toy(base):
        return toy_prepare(paths.photos, paths.prepared)
    from subjectgen_training.data.prepare import PrepareConfig, prepare_photos

    return prepare_photos(PrepareConfig(photos=paths.photos, out=paths.prepared))


def zip_subject(paths: SubjectPaths, downloads: Path) -> Path:
    """``downloads/NAME.zip``: the subject folder (subject files, train_config.json) without its checkpoints."""
    if not paths.is_trained():
        raise WorkdirError(f"{paths.name} has no trained subject yet: train it on the Train tab first.")
    downloads.mkdir(parents=True, exist_ok=True)
    staging = make_staging_dir(downloads, f".{paths.name}.zip")
    temp = staging / f"{paths.name}.zip"
    with zipfile.ZipFile(temp, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(paths.subject.rglob("*")):
            relative = file.relative_to(paths.subject)
            if file.is_file() and relative.parts[0] not in ("checkpoints", "logs"):
                archive.write(file, Path(paths.name) / relative)
    target = downloads / f"{paths.name}.zip"
    temp.replace(target)
    staging.rmdir()
    return target
