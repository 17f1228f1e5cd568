"""Run an experiment (subjects x setups) as a graph of stages, skipping what is done, then write the report.

Stages: photos (sample photos, optional ``prepare``) -> regularise (one set per ``regularizations`` entry, shared by
every setup and subject that names it) -> per subject: the ``baseline`` row (base model, no subject: generate and
evaluate) when asked, then per setup: train (:func:`subjectgen_training.trainer.train`), generate
(:func:`subjectgen_training.generate.generate_images`), evaluate (:func:`subjectgen_training.evaluation.evaluate_images`)
-> the compose stages when asked. :func:`experiment_graph` builds them once as a
:class:`~subjectgen_training.experiment.graph.StageGraph` and an executor runs it (``local``: in order, in this
process; ``ray``: as Ray tasks); the driver then writes summary.json, summary.md and report.html. A stage is done when
its marker ``stages/<stage>.json`` exists; the marker is written atomically after the stage's outputs, and records the
stage's settings. A stopped experiment therefore resumes at the first unfinished stage (training itself resumes from
its last checkpoint); changing a finished stage's settings is an error rather than a silent mix of old and new results.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from subjectgen_diffusers.atomic_io import atomic_write_json
from subjectgen_diffusers.errors import SubjectgenError
from subjectgen_training.builtin_models import resolve_model
from subjectgen_training.evaluation.metrics import PROTOCOL_NOTE
from subjectgen_training.experiment.config import ExperimentConfig
from subjectgen_training.experiment.executors import ExecutorSpec, failure_report, run_graph
from subjectgen_training.experiment.graph import Stage, StageGraph, StageSettingsError

logger = logging.getLogger(__name__)

SUMMARY_VERSION = 1
BASELINE = "baseline"
BASELINE_SETUP = {"name": BASELINE, "method": None, "regularization": None,
                  "description": "the base model, untrained, with {} read as 'a person' (what the setups improve on)"}


def _relative_to(path: Path, root: Path) -> str:
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


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _stage(layout: ExperimentLayout, name: str, settings: dict[str, Any], work: Callable[[], Any],
           needs=(), kind: str = "photos") -> Stage:
    return Stage(name=name, marker=layout.marker(name), settings=settings, work=work,
                 needs=tuple(n for n in needs if n), kind=kind)


def run_stage(layout: ExperimentLayout, stage: str, settings: dict[str, Any], work: Callable[[], Any]) -> bool:
    """Run ``work`` now unless ``stage`` is already done with the same settings; return whether it ran."""
    try:
        return _stage(layout, stage, settings, work).run()
    except StageSettingsError as error:
        raise ExperimentError(str(error)) from error


def _photo_stages(graph: StageGraph, config: ExperimentConfig, layout: ExperimentLayout) -> dict[str, tuple]:
    """Each subject's photo folder and the stage that makes it (sample photos written, prepare run when asked)."""
    from subjectgen_training.experiment.photo_sources import is_photo_source, write_source_photos

    folders = {}
    for subject in config.subjects:
        source, last = config.resolve_path(subject.photos), None
        if is_photo_source(source):
            target = layout.subject_photos(subject.name) / "original"
            last = graph.add(_stage(layout, f"photos-{subject.name}", {"photos": source},
                                    lambda source=source, target=target: write_source_photos(source, target)))
            source = str(target)
        if subject.prepare:
            from subjectgen_training.prepare import PrepareConfig, prepare_photos

            prepared = layout.subject_photos(subject.name) / "prepared"
            prepare_config = PrepareConfig(photos=Path(source), out=prepared)
            last = graph.add(_stage(layout, f"prepare-{subject.name}", {"photos": source},
                                    lambda prepare_config=prepare_config: prepare_photos(prepare_config),
                                    needs=(last,), kind="prepare"))
            source = str(prepared)
        folders[subject.name] = (source, last)
    return folders


def _regularization_stages(graph: StageGraph, config: ExperimentConfig, layout: ExperimentLayout) -> dict[str, tuple]:
    from subjectgen_training.regularize import RegularizeConfig, generate_regularization

    used = sorted({s.regularization for s in config.setups if s.regularization})
    folders = {}
    for key in used:
        spec = dataclasses.asdict(config.regularizations[key])
        spec["model"] = resolve_model(config.resolve_path(spec["model"]), layout.models)
        spec["lora"] = resolve_model(config.resolve_path(spec["lora"]) if spec["lora"] else None, layout.models)
        out = layout.regularization(key)
        settings = {**config.regularizations[key].__dict__}  # ids as written, not cache paths
        name = graph.add(_stage(layout, f"regularize-{key}", settings,
                                lambda spec=spec, out=out: generate_regularization(RegularizeConfig(**spec, out=out)),
                                kind="regularize"))
        folders[key] = (str(out), name)
    return folders


def _train_stage(graph: StageGraph, config, layout, subject, setup, photos: tuple, reg: tuple | None,
                 base: str) -> tuple[Path, str]:
    """The (subject, setup) training stage; return the subject folder it writes and the stage's name."""
    from subjectgen_training.train_config import TrainConfig
    from subjectgen_training.trainer import train

    out = layout.run(subject.name, setup.name) / "subject"
    token = {"token": subject.token} if subject.token else {}  # recorded only when given: older markers stay valid
    settings = {**config.train, **setup.train, "base": config.base, "method": setup.method,
                "regularization": setup.regularization, "photos": subject.photos, **token}
    train_config = TrainConfig.from_dict({**config.train, **setup.train, "base": base, "photos": photos[0],
                                          "method": setup.method, "out": str(out), "reg_dir": reg[0] if reg else None,
                                          "resume": True, **token})
    name = graph.add(_stage(layout, f"train-{subject.name}-{setup.name}", settings, lambda: train(train_config),
                            needs=(photos[1], reg[1] if reg else None), kind="train"))
    return out, name


def _sample_and_score_stages(graph: StageGraph, config, layout, subject_name: str, setup_name: str,
                             subject_folder: Path | None, photos: str, base: str, also_load: list[Path] | None = None,
                             token: str | None = None, needs=()) -> str:
    """Generate the prompt set (with the trained subject, or the base model for the baseline), then evaluate it;
    return the evaluation stage's name."""
    from subjectgen_training.evaluation import EvaluateConfig, evaluate_images
    from subjectgen_training.generate import GenerateConfig, generate_images

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
    generated = graph.add(_stage(layout, f"generate-{key}",
                                 {**dataclasses.asdict(config.generate), "base": config.base, **recorded},
                                 lambda: generate_images(generate_config), needs=needs, kind="generate"))

    evaluation = dataclasses.asdict(config.evaluate)
    evaluation["clip_model"] = resolve_model(evaluation["clip_model"], layout.models)
    evaluate_config = EvaluateConfig(images=str(run_dir / "images"), reference=photos,
                                     out=str(run_dir / "results.json"), **evaluation)
    return graph.add(_stage(layout, f"evaluate-{key}", dataclasses.asdict(config.evaluate),
                            lambda: evaluate_images(evaluate_config), needs=(generated, *needs), kind="evaluate"))


def run_record(layout: ExperimentLayout, subject_name: str, setup_name: str) -> dict[str, Any]:
    """A run's entry in the summary, read from its ``results.json``."""
    run_dir = layout.run(subject_name, setup_name)
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    return {"subject": subject_name, "setup": setup_name,
            "results": (run_dir / "results.json").relative_to(layout.root).as_posix(),
            "images": (run_dir / "images").relative_to(layout.root).as_posix(),
            "overall": results["summary"]["overall"], "per_prompt": results["summary"]["per_prompt"]}


def _sample_and_score(config, layout, subject_name: str, setup_name: str, subject_folder: Path | None,
                      photos: str, base: str, also_load: list[Path] | None = None,
                      token: str | None = None) -> dict[str, Any]:
    """Generate and evaluate now, in this process (for tools that score one folder); return the run's entry."""
    graph = StageGraph()
    _sample_and_score_stages(graph, config, layout, subject_name, setup_name, subject_folder, photos, base,
                             also_load=also_load, token=token)
    for stage in graph:
        try:
            stage.run()
        except StageSettingsError as error:
            raise ExperimentError(str(error)) from error
    return run_record(layout, subject_name, setup_name)


def _pooled_by_setup(layout: ExperimentLayout, config: ExperimentConfig, runs: list[dict[str, Any]]) -> dict:
    """Each setup's scores over all subjects' images together (the comparison across people)."""
    from subjectgen_training.evaluation.metrics import summarize

    pooled = {}
    for name in ([BASELINE] if config.baseline else []) + [setup.name for setup in config.setups]:
        images = []
        for run in runs:
            if run["setup"] == name:
                images += json.loads((layout.root / run["results"]).read_text(encoding="utf-8"))["images"]
        pooled[name] = summarize(images)
    return pooled


def flat_scores(overall: dict[str, Any]) -> dict[str, float]:
    """One run's mean scores by name: identity, its parts (hidden_mark, traits), CLIP-T/-I, prompt_following, and
    each prompt check's rate (background, hat, glasses); what a run does not have is left out."""
    flat = {}
    for key in ("identity", "clip_text", "clip_image", "prompt_following"):
        if overall.get(key):
            flat[key] = overall[key]["mean"]
    for group in ("identity_parts", "prompt_checks"):
        for key, stat in (overall.get(group) or {}).items():
            if stat:
                flat[key] = stat["mean"]
    return flat


def _spread(values: list[float]) -> dict[str, float]:
    import numpy as np

    array = np.asarray(values, dtype=float)
    return {"mean": float(array.mean()), "std": float(array.std()), "min": float(array.min()),
            "max": float(array.max()), "n": len(values)}


def across_subjects(config: ExperimentConfig, runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per subject group (``all`` when no subject names one) and setup: the spread over subjects of each subject's
    mean score, the spread of its difference from the same subject's baseline, and how many subjects' identity
    beats their baseline's."""
    groups: dict[str, list[str]] = {}
    for subject in config.subjects:
        groups.setdefault(subject.group or "all", []).append(subject.name)
    scores = {(run["subject"], run["setup"]): flat_scores(run["overall"]) for run in runs}
    names = ([BASELINE] if config.baseline else []) + [setup.name for setup in config.setups]
    table: dict[str, dict[str, Any]] = {}
    for group, subjects in groups.items():
        table[group] = {"subjects": subjects, "setups": {}}
        for name in names:
            rows = [scores[(subject, name)] for subject in subjects if (subject, name) in scores]
            metrics = sorted({key for row in rows for key in row})
            entry: dict[str, Any] = {"scores": {k: _spread([row[k] for row in rows if k in row]) for k in metrics}}
            if config.baseline and name != BASELINE:
                pairs = [(scores[(s, name)], scores[(s, BASELINE)]) for s in subjects
                         if (s, name) in scores and (s, BASELINE) in scores]
                entry["vs_baseline"] = {k: _spread([a[k] - b[k] for a, b in pairs if k in a and k in b])
                                        for k in metrics if any(k in a and k in b for a, b in pairs)}
                entry["beats_baseline"] = sum(a.get("identity", 0.0) > b.get("identity", 0.0) for a, b in pairs)
            table[group]["setups"][name] = entry
    return table


def _identity_measure(layout: ExperimentLayout, runs: list[dict[str, Any]]) -> str | None:
    if not runs:
        return None
    return json.loads((layout.root / runs[0]["results"]).read_text(encoding="utf-8"))["settings"].get("identity_measure")


def _prompt_measure(layout: ExperimentLayout, runs: list[dict[str, Any]]) -> str | None:
    if not runs:
        return None
    return json.loads((layout.root / runs[0]["results"]).read_text(encoding="utf-8"))["settings"].get("prompt_measure")


def experiment_graph(config: ExperimentConfig, layout: ExperimentLayout, base: str) -> tuple[StageGraph, dict]:
    """Every stage of ``config`` (in the order the local executor runs them) and what the summary reads after."""
    graph = StageGraph()
    photos = _photo_stages(graph, config, layout)
    regularization = _regularization_stages(graph, config, layout)
    runs: list[tuple[str, str, dict[str, Any]]] = []  # (subject, setup, extra summary keys), in summary order
    trained: dict[tuple[str, str], str] = {}
    for subject in config.subjects:
        own = photos[subject.name]
        if config.baseline:
            _sample_and_score_stages(graph, config, layout, subject.name, BASELINE, None, own[0], base,
                                     needs=(own[1],))
            runs.append((subject.name, BASELINE, {}))
        for setup in config.setups:
            reg = regularization.get(setup.regularization) if setup.regularization else None
            folder, train_stage = _train_stage(graph, config, layout, subject, setup, own, reg, base)
            trained[(subject.name, setup.name)] = train_stage
            _sample_and_score_stages(graph, config, layout, subject.name, setup.name, folder, own[0], base,
                                     needs=(train_stage, own[1]))
            runs.append((subject.name, setup.name, {"method": setup.method, "regularization": setup.regularization}))
    plan = {"photos": {name: folder for name, (folder, _) in photos.items()}, "runs": runs}
    if config.compose is not None:
        from subjectgen_training.experiment.compose import compose_stages

        plan["compose"] = compose_stages(graph, config, layout, base, photos, regularization, trained)
    return graph, plan


def run_experiment(config: ExperimentConfig, out: str | Path, executor: ExecutorSpec | None = None) -> Path:
    """Run (or resume) every stage of ``config`` under ``out`` with ``executor`` (default: local, in this process);
    then write the summary and report; return the path of ``summary.json``."""
    layout = ExperimentLayout(Path(out))
    layout.root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(layout.root / "experiment.json", _jsonable(dataclasses.asdict(config)))
    base = resolve_model(config.resolve_path(config.base), layout.models)
    graph, plan = experiment_graph(config, layout, base)
    try:
        failures = run_graph(graph, executor or ExecutorSpec(), out=layout.root, resources=config.resources)
    except StageSettingsError as error:
        raise ExperimentError(str(error)) from error
    if failures:
        raise ExperimentError(f"{failure_report(graph, failures).rstrip('.')}. The other stages finished; fix the cause and run "
                              f"the same command again: only the missing stages run.")
    return write_summary(config, layout, plan)


def write_summary(config: ExperimentConfig, layout: ExperimentLayout, plan: dict[str, Any]) -> Path:
    """``summary.json`` and the report, from the finished stages' results (the driver's last step)."""
    from subjectgen_training.photos import candidate_files
    from subjectgen_training.prompts import load_prompts
    from subjectgen_training.report import write_report

    photos = plan["photos"]
    runs = [{**run_record(layout, subject, setup), **extra} for subject, setup, extra in plan["runs"]]
    summary = {
        "version": SUMMARY_VERSION,
        "experiment": config.name,
        "description": config.description,
        "protocol": PROTOCOL_NOTE,
        "identity_measure": _identity_measure(layout, runs),
        "prompts": load_prompts(config.prompt_spec()),
        "subjects": [{"name": s.name, "group": s.group, "source": s.photos, "photos": photos[s.name],
                      "reference": [_relative_to(p, layout.summary.parent) for p in candidate_files(Path(photos[s.name]))]}
                     for s in config.subjects],
        "setups": ([BASELINE_SETUP] if config.baseline else [])
        + [{"name": s.name, "method": s.method, "regularization": s.regularization, "description": s.description}
           for s in config.setups],
        "runs": runs,
        "per_setup": _pooled_by_setup(layout, config, runs),
        "across_subjects": across_subjects(config, runs),
        "prompt_measure": _prompt_measure(layout, runs),
    }
    if config.compose is not None:
        from subjectgen_training.experiment.compose import compose_summary

        summary.update(compose_summary(config, layout, plan["compose"], runs))
    atomic_write_json(layout.summary, summary)
    write_report(layout.summary)
    return layout.summary
