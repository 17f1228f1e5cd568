"""The stages of an experiment and where their outputs live: photos (sample photos, optional ``prepare``),
regularisation sets, training, and each run's sampling and scoring.

A stage is done when its marker ``stages/<stage>.json`` exists; the marker is written atomically after the stage's
outputs and records the stage's settings (:mod:`subjectgen_training.experiment.graph`). The runner
(:mod:`subjectgen_training.experiment.runner`) and the compose stages (:mod:`subjectgen_training.experiment.compose`)
both build their graphs from these pieces.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from subjectgen_diffusers.errors import SubjectgenError
from subjectgen_training.models.builtin_models import resolve_model
from subjectgen_training.experiment.config import ExperimentConfig, recorded_settings
from subjectgen_training.experiment.graph import Stage, StageGraph, StageSettingsError

SUMMARY_VERSION = 1
BASELINE = "baseline"
BASELINE_SETUP = {"name": BASELINE, "method": None, "regularization": None,
                  "description": "the base model, untrained, with {} read as 'a person' (what the setups improve on)"}


def relative_to(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (the report's folder), so the report's links work wherever the run was started."""
    return Path(os.path.relpath(Path(path).resolve(), Path(root).resolve())).as_posix()


class ExperimentError(SubjectgenError):
    """The experiment folder does not match the config; the message says what to change."""


@dataclasses.dataclass
class ExperimentLayout:
    """Where every output of an experiment lives under ``--out``."""

    root: Path

    def marker(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"

    def subject_photos(self, subject: str) -> Path:
        return self.root / "subjects" / subject / "photos"

    def regularization(self, key: str) -> Path:
        return self.root / "regularization" / key

    def run(self, subject: str, setup: str) -> Path:
        return self.root / "runs" / subject / setup

    @property
    def models(self) -> Path:
        return self.root / "builtin-models"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"


def make_stage(layout: ExperimentLayout, name: str, settings: dict[str, Any], work: Callable[[], Any],
           needs=(), kind: str = "photos") -> Stage:
    return Stage(name=name, marker=layout.marker(name), settings=settings, work=work,
                 needs=tuple(n for n in needs if n), kind=kind)


def run_stage(layout: ExperimentLayout, stage: str, settings: dict[str, Any], work: Callable[[], Any]) -> bool:
    """Run ``work`` now unless ``stage`` is already done with the same settings; return whether it ran."""
    try:
        return make_stage(layout, stage, settings, work).run()
    except StageSettingsError as error:
        raise ExperimentError(str(error)) from error


def photo_stages(graph: StageGraph, config: ExperimentConfig, layout: ExperimentLayout) -> dict[str, tuple]:
    """Each subject's photo folder and the stage that makes it (sample photos written, prepare run when asked)."""
    from subjectgen_training.experiment.photo_sources import is_photo_source, write_source_photos

    folders = {}
    for subject in config.subjects:
        source, last = config.resolve_path(subject.photos), None
        if is_photo_source(source):
            target = layout.subject_photos(subject.name) / "original"
            last = graph.add(make_stage(layout, f"photos-{subject.name}", {"photos": source},
                                    lambda source=source, target=target: write_source_photos(source, target)))
            source = str(target)
        if subject.prepare:
            from subjectgen_training.data.prepare import PrepareConfig, prepare_photos

            prepared = layout.subject_photos(subject.name) / "prepared"
            prepare_config = PrepareConfig(photos=Path(source), out=prepared)
            last = graph.add(make_stage(layout, f"prepare-{subject.name}", {"photos": source},
                                    lambda prepare_config=prepare_config: prepare_photos(prepare_config),
                                    needs=(last,), kind="prepare"))
            source = str(prepared)
        folders[subject.name] = (source, last)
    return folders


def regularization_stages(graph: StageGraph, config: ExperimentConfig, layout: ExperimentLayout) -> dict[str, tuple]:
    from subjectgen_training.sampling.regularize import RegularizeConfig, generate_regularization

    used = sorted({s.regularization for s in config.setups if s.regularization})
    folders = {}
    for key in used:
        spec = dataclasses.asdict(config.regularizations[key])
        spec["model"] = resolve_model(config.resolve_path(spec["model"]), layout.models)
        spec["lora"] = resolve_model(config.resolve_path(spec["lora"]) if spec["lora"] else None, layout.models)
        out = layout.regularization(key)
        settings = recorded_settings(config.regularizations[key])  # ids as written, not cache paths
        name = graph.add(make_stage(layout, f"regularize-{key}", settings,
                                lambda spec=spec, out=out: generate_regularization(RegularizeConfig(**spec, out=out)),
                                kind="regularize"))
        folders[key] = (str(out), name)
    return folders


def train_stage(graph: StageGraph, config, layout, subject, setup, photos: tuple, reg: tuple | None,
                 base: str) -> tuple[Path, str]:
    """The (subject, setup) training stage; return the subject folder it writes and the stage's name."""
    from subjectgen_training.trainer.config import TrainConfig
    from subjectgen_training.trainer.loop import train

    out = layout.run(subject.name, setup.name) / "subject"
    token = {"token": subject.token} if subject.token else {}  # recorded only when given: older markers stay valid
    settings = {**config.train, **setup.train, "base": config.base, "method": setup.method,
                "regularization": setup.regularization, "photos": subject.photos, **token}
    train_config = TrainConfig.from_dict({**config.train, **setup.train, "base": base, "photos": photos[0],
                                          "method": setup.method, "out": str(out), "reg_dir": reg[0] if reg else None,
                                          "resume": True, **token})
    name = graph.add(make_stage(layout, f"train-{subject.name}-{setup.name}", settings, lambda: train(train_config),
                            needs=(photos[1], reg[1] if reg else None), kind="train"))
    return out, name


def sample_and_score_stages(graph: StageGraph, config, layout, subject_name: str, setup_name: str,
                             subject_folder: Path | None, photos: str, base: str, also_load: list[Path] | None = None,
                             token: str | None = None, needs=()) -> str:
    """Generate the prompt set (with the trained subject, or the base model for the baseline), then evaluate it;
    return the evaluation stage's name."""
    from subjectgen_training.evaluation import EvaluateConfig, evaluate_images
    from subjectgen_training.sampling.generate import GenerateConfig, generate_images

    run_dir = layout.run(subject_name, setup_name)
    key = f"{subject_name}-{setup_name}"
    generation = dataclasses.asdict(config.generate)
    generation["prompts"] = config.prompt_spec()
    # composition (subjectgen_training.experiment.compose): other subjects loaded beside this one, and which token fills {}
    extra = {"also_load": [str(p) for p in also_load]} if also_load else {}
    extra.update({"token": token} if token else {})
    generate_config = GenerateConfig(base=base, subject=str(subject_folder) if subject_folder else None,
                                     out=str(run_dir / "images"), **generation, **extra)
    recorded = {"also_load": [Path(p).relative_to(layout.root).as_posix() for p in also_load]} if also_load else {}
    recorded.update({"token": token} if token else {})
    generated = graph.add(make_stage(layout, f"generate-{key}",
                                 {**recorded_settings(config.generate), "base": config.base, **recorded},
                                 lambda: generate_images(generate_config), needs=needs, kind="generate"))

    evaluation = dataclasses.asdict(config.evaluate)
    evaluation["clip_model"] = resolve_model(evaluation["clip_model"], layout.models)
    evaluate_config = EvaluateConfig(images=str(run_dir / "images"), reference=photos,
                                     out=str(run_dir / "results.json"), **evaluation)
    return graph.add(make_stage(layout, f"evaluate-{key}", recorded_settings(config.evaluate),
                            lambda: evaluate_images(evaluate_config), needs=(generated, *needs), kind="evaluate"))


def run_record(layout: ExperimentLayout, subject_name: str, setup_name: str) -> dict[str, Any]:
    """A run's entry in the summary, read from its ``results.json``."""
    run_dir = layout.run(subject_name, setup_name)
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    return {"subject": subject_name, "setup": setup_name,
            "results": (run_dir / "results.json").relative_to(layout.root).as_posix(),
            "images": (run_dir / "images").relative_to(layout.root).as_posix(),
            "overall": results["summary"]["overall"], "per_prompt": results["summary"]["per_prompt"]}


def sample_and_score(config, layout, subject_name: str, setup_name: str, subject_folder: Path | None,
                      photos: str, base: str, also_load: list[Path] | None = None,
                      token: str | None = None) -> dict[str, Any]:
    """Generate and evaluate now, in this process (for tools that score one folder); return the run's entry."""
    graph = StageGraph()
    sample_and_score_stages(graph, config, layout, subject_name, setup_name, subject_folder, photos, base,
                             also_load=also_load, token=token)
    for stage in graph:
        try:
            stage.run()
        except StageSettingsError as error:
            raise ExperimentError(str(error)) from error
    return run_record(layout, subject_name, setup_name)


