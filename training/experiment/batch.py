"""Many people at once (``subjectgen batch PEOPLE.yaml --out DIR``): per person prepare, train, preview, score.

``PEOPLE.yaml`` holds ``base`` (a model; ``builtin:`` names included), ``train`` (:class:`TrainConfig` fields shared by
everyone, ``method`` among them), ``people`` (each ``{name, photos, token}``, with optional ``prepare`` and ``train``
overrides) and, optionally, ``generate`` / ``evaluate`` (the experiment's sampling and scoring settings) and
``resources`` (Ray resources per stage kind). Every person's files go under ``DIR/<name>/``: ``photos/`` (a photo
source's photos, ``prepared/`` when asked), ``subject/`` (the trained subject), ``images/`` and ``preview.png`` (a grid:
one row per prompt), ``results.json`` (scores) and ``stages/`` (the markers). The stages form the same kind of graph as
an experiment's, run by the same executors, so a rerun skips finished stages (a run with one more person trains only
that person) and one person's failure never stops the others: ``DIR/batch.json`` records each person's status, files,
scores and error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from subjectgen_diffusers.atomic_io import atomic_save_image, atomic_write_json
from subjectgen_diffusers.errors import SubjectgenError
from subjectgen_training.models.builtin_models import resolve_model
from subjectgen_training.experiment.config import EvaluationSpec, GenerationSpec, _build, read_yaml, recorded_settings
from subjectgen_training.experiment.executors import ExecutorSpec, run_graph
from subjectgen_training.experiment.graph import ResourceSpec, Stage, StageGraph, StageSettingsError, check_resources

BATCH_VERSION = 1
# TrainConfig fields the batch sets per person: they may not appear under `train`.
PERSON_FIELDS = ("base", "photos", "out", "resume", "subjects", "token")


class BatchConfigError(SubjectgenError):
    """PEOPLE.yaml is wrong; the message names the key and what is allowed."""


@dataclass
class PersonSpec:
    name: str  # folder name under --out
    photos: str  # folder of photos (relative to PEOPLE.yaml) or a photo source (toy:seed=3, builtin:astronaut)
    token: str | None = None  # the person's token; default: the method's (<new1>)
    prepare: bool = False  # run `subjectgen prepare` (face crops + masks) on the photos first
    train: dict[str, Any] = field(default_factory=dict)  # this person's TrainConfig overrides


@dataclass
class BatchConfig:
    base: str  # SD 1.x model (Hub id, folder or builtin: name)
    train: dict[str, Any]  # TrainConfig fields shared by everyone (method among them)
    people: list[PersonSpec]
    generate: GenerationSpec = field(default_factory=GenerationSpec)  # the preview (and what is scored)
    evaluate: EvaluationSpec = field(default_factory=EvaluationSpec)
    resources: dict[str, ResourceSpec] = field(default_factory=dict)  # as in an experiment (README "Scale out")
    source: str | None = None  # folder of PEOPLE.yaml; set by the loader

    def __post_init__(self) -> None:
        from subjectgen_training.trainer.config import TrainConfig

        names = [p.name for p in self.people]
        if not names:
            raise BatchConfigError("people: list one or more people ({name, photos, token}).")
        repeated = sorted({n for n in names if names.count(n) > 1})
        bad = [n for n in names if not n or "/" in n or n.startswith(".") or n == "batch.json"]
        if repeated or bad:
            raise BatchConfigError(f"people: names become folder names and must be unique; fix {repeated + bad}.")
        allowed = [f for f in TrainConfig.file_keys() if f not in PERSON_FIELDS]
        for where, values in [("train", self.train)] + [(f"people.{p.name}.train", p.train) for p in self.people]:
            unknown = sorted(set(values) - set(allowed))
            if unknown:
                raise BatchConfigError(f"{where}: unknown keys {unknown}; allowed keys are {allowed}.")
        for person in self.people:
            try:
                TrainConfig.from_dict({**self.train, **person.train, "base": self.base, "photos": "p", "out": "o"})
            except SubjectgenError as error:
                raise BatchConfigError(f"people.{person.name}: {error}") from error
        check_resources(self.resources, BatchConfigError)

    def resolve_path(self, value: str) -> str:
        from subjectgen_training.experiment.photo_sources import is_photo_source

        if is_photo_source(value) or self.source is None or Path(value).is_absolute():
            return value
        candidate = Path(self.source) / value
        return str(candidate) if candidate.exists() else value


def load_batch_config(path: str | Path) -> BatchConfig:
    path = Path(path)
    if not path.is_file():
        raise BatchConfigError(f"{path} is not a file: give the path of a PEOPLE.yaml.")
    data = read_yaml(path)
    if isinstance(data, dict):
        data = {**data, "source": str(path.resolve().parent)}
    try:
        return _build(BatchConfig, data, path.name)
    except SubjectgenError as error:
        raise BatchConfigError(str(error)) from error


def write_preview_grid(images: Path, out: Path, columns: int) -> Path:
    """The person's images tiled ``columns`` to a row (one row per prompt), in file order."""
    from PIL import Image

    files = sorted(images.glob("*.png"))
    tiles = [Image.open(f).convert("RGB") for f in files]
    width, height = tiles[0].size
    rows = -(-len(tiles) // columns)
    grid = Image.new("RGB", (columns * width, rows * height), "white")
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % columns) * width, (i // columns) * height))
    return atomic_save_image(out, grid)


def _person_stages(graph: StageGraph, config: BatchConfig, root: Path, person: PersonSpec, base: str) -> None:
    from subjectgen_training.evaluation import EvaluateConfig, evaluate_images
    from subjectgen_training.experiment.photo_sources import is_photo_source, write_source_photos
    from subjectgen_training.sampling.generate import GenerateConfig, generate_images
    from subjectgen_training.trainer.config import TrainConfig
    from subjectgen_training.trainer.loop import train

    folder = root / person.name

    def stage(kind: str, settings: dict, work, needs=()) -> str:
        return graph.add(Stage(name=f"{kind}-{person.name}", marker=folder / "stages" / f"{kind}.json",
                               settings=settings, work=work, needs=tuple(n for n in needs if n), kind=kind))

    photos, last = config.resolve_path(person.photos), None
    if is_photo_source(photos):
        target = folder / "photos" / "original"
        last = stage("photos", {"photos": photos}, lambda: write_source_photos(person.photos, target))
        photos = str(target)
    if person.prepare:
        from subjectgen_training.data.prepare import PrepareConfig, prepare_photos

        prepare_config = PrepareConfig(photos=Path(photos), out=folder / "photos" / "prepared")
        last = stage("prepare", {"photos": person.photos}, lambda: prepare_photos(prepare_config), (last,))
        photos = str(prepare_config.out)
    values = {**config.train, **person.train}
    token = {"token": person.token} if person.token else {}
    train_config = TrainConfig.from_dict({**values, "base": base, "photos": photos, "out": str(folder / "subject"),
                                          "resume": True, **token})
    trained = stage("train", {**values, "base": config.base, "photos": person.photos, **token},
                    lambda: train(train_config), (last,))
    generation = {**dataclasses.asdict(config.generate), "prompts": _prompt_spec(config)}
    generate_config = GenerateConfig(base=base, subject=str(folder / "subject"), out=str(folder / "images"),
                                     **generation, **token)

    def generate_and_grid() -> None:
        generate_images(generate_config)
        write_preview_grid(folder / "images", folder / "preview.png", config.generate.num_per_prompt)

    generated = stage("generate", {**recorded_settings(config.generate), "base": config.base},
                      generate_and_grid, (trained,))
    evaluation = dataclasses.asdict(config.evaluate)
    evaluation["clip_model"] = resolve_model(evaluation["clip_model"], root / "builtin-models")
    evaluate_config = EvaluateConfig(images=str(folder / "images"), reference=photos,
                                     out=str(folder / "results.json"), **evaluation)
    stage("evaluate", recorded_settings(config.evaluate), lambda: evaluate_images(evaluate_config), (generated, last))


def _prompt_spec(config: BatchConfig) -> str:
    prompts = config.generate.prompts
    return " | ".join(prompts) if isinstance(prompts, list) else config.resolve_path(prompts)


def _person_record(root: Path, person: PersonSpec, graph: StageGraph, failures: dict[str, str]) -> dict[str, Any]:
    import json

    from subjectgen_training.experiment.statistics import flat_scores

    folder = root / person.name
    own = [s for s in graph if s.marker.parent.parent == folder]
    errors = {s.name: failures[s.name] for s in own if s.name in failures}
    files = {"subject": "subject", "preview": "preview.png", "images": "images", "results": "results.json"}
    record: dict[str, Any] = {"name": person.name, "photos": person.photos, "token": person.token,
                              "files": {key: f"{person.name}/{value}" for key, value in files.items()
                                        if (folder / value).exists()}}
    if errors:
        record.update(status="failed", error="; ".join(f"{n}: {e}" for n, e in errors.items()), scores=None)
    elif not all(s.marker.is_file() for s in own):
        record.update(status="not run", error="a stage it needs failed", scores=None)
    else:
        results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        record.update(status="done", error=None, scores=flat_scores(results["summary"]["overall"]))
    return record


def run_batch(config: BatchConfig, out: str | Path, executor: ExecutorSpec | None = None) -> tuple[Path, list]:
    """Run (or resume) every person's stages under ``out``; write ``batch.json``; return it and the failed people."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    base = resolve_model(config.resolve_path(config.base), root / "builtin-models")
    graph = StageGraph()
    for person in config.people:
        _person_stages(graph, config, root, person, base)
    try:
        failures = run_graph(graph, executor or ExecutorSpec(), out=root, resources=config.resources)
    except StageSettingsError as error:
        raise BatchConfigError(str(error)) from error
    failed = {f.stage: f.error for f in failures}
    people = [_person_record(root, person, graph, failed) for person in config.people]
    path = atomic_write_json(root / "batch.json", {"version": BATCH_VERSION, "base": config.base,
                                                   "train": config.train, "people": people})
    return path, [p for p in people if p["status"] != "done"]
