"""Run an experiment (subjects x setups) as a graph of stages, skipping what is done, then write the report.

Stages: photos (sample photos, optional ``prepare``) -> regularise (one set per ``regularizations`` entry, shared by
every setup and subject that names it) -> per subject: the ``baseline`` row (base model, no subject: generate and
evaluate) when asked, then per setup: train (:func:`subjectgen_training.trainer.loop.train`), generate
(:func:`subjectgen_training.sampling.generate.generate_images`), evaluate (:func:`subjectgen_training.evaluation.evaluate_images`)
-> the compose stages when asked. :func:`experiment_graph` builds them once (from
:mod:`subjectgen_training.experiment.stages`) as a
:class:`~subjectgen_training.experiment.graph.StageGraph` and an executor runs it (``local``: in order, in this
process; ``ray``: as Ray tasks); the driver then writes summary.json, summary.md and report.html. A stage is done when
its marker ``stages/<stage>.json`` exists; the marker is written atomically after the stage's outputs, and records the
stage's settings. A stopped experiment therefore resumes at the first unfinished stage (training itself resumes from
its last checkpoint); changing a finished stage's settings is an error rather than a silent mix of old and new results.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from subjectgen_diffusers.atomic_io import atomic_write_json
from subjectgen_training.models.builtin_models import resolve_model
from subjectgen_training.evaluation.metrics import PROTOCOL_NOTE
from subjectgen_training.experiment.config import ExperimentConfig
from subjectgen_training.experiment.executors import ExecutorSpec, failure_report, run_graph
from subjectgen_training.experiment.graph import StageGraph, StageSettingsError, jsonable
from subjectgen_training.experiment.stages import (  # noqa: F401 - ExperimentError, ExperimentLayout: the runner's API
    BASELINE,
    BASELINE_SETUP,
    SUMMARY_VERSION,
    ExperimentError,
    ExperimentLayout,
    photo_stages,
    regularization_stages,
    relative_to,
    run_record,
    sample_and_score_stages,
    train_stage,
)
from subjectgen_training.experiment.statistics import (  # noqa: F401 - flat_scores, across_subjects: the runner's API
    across_subjects,
    flat_scores,
    identity_measure,
    pooled_by_setup,
    prompt_measure,
)

logger = logging.getLogger(__name__)



def experiment_graph(config: ExperimentConfig, layout: ExperimentLayout, base: str) -> tuple[StageGraph, dict]:
    """Every stage of ``config`` (in the order the local executor runs them) and what the summary reads after."""
    graph = StageGraph()
    photos = photo_stages(graph, config, layout)
    regularization = regularization_stages(graph, config, layout)
    runs: list[tuple[str, str, dict[str, Any]]] = []  # (subject, setup, extra summary keys), in summary order
    trained: dict[tuple[str, str], str] = {}
    for subject in config.subjects:
        own = photos[subject.name]
        if config.baseline:
            sample_and_score_stages(graph, config, layout, subject.name, BASELINE, None, own[0], base,
                                     needs=(own[1],))
            runs.append((subject.name, BASELINE, {}))
        for setup in config.setups:
            reg = regularization.get(setup.regularization) if setup.regularization else None
            folder, train_name = train_stage(graph, config, layout, subject, setup, own, reg, base)
            trained[(subject.name, setup.name)] = train_name
            sample_and_score_stages(graph, config, layout, subject.name, setup.name, folder, own[0], base,
                                     needs=(train_name, own[1]))
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
    atomic_write_json(layout.root / "experiment.json", jsonable(dataclasses.asdict(config)))
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
    from subjectgen_training.data.photos import candidate_files
    from subjectgen_training.prompts import load_prompts
    from subjectgen_training.experiment.report import write_report

    photos = plan["photos"]
    runs = [{**run_record(layout, subject, setup), **extra} for subject, setup, extra in plan["runs"]]
    summary = {
        "version": SUMMARY_VERSION,
        "experiment": config.name,
        "description": config.description,
        "protocol": PROTOCOL_NOTE,
        "identity_measure": identity_measure(layout, runs),
        "prompts": load_prompts(config.prompt_spec()),
        "subjects": [{"name": s.name, "group": s.group, "source": s.photos, "photos": photos[s.name],
                      "reference": [relative_to(p, layout.summary.parent) for p in candidate_files(Path(photos[s.name]))]}
                     for s in config.subjects],
        "setups": ([BASELINE_SETUP] if config.baseline else [])
        + [{"name": s.name, "method": s.method, "regularization": s.regularization, "description": s.description}
           for s in config.setups],
        "runs": runs,
        "per_setup": pooled_by_setup(layout, config, runs),
        "across_subjects": across_subjects(config, runs),
        "prompt_measure": prompt_measure(layout, runs),
    }
    if config.compose is not None:
        from subjectgen_training.experiment.compose import compose_summary

        summary.update(compose_summary(config, layout, plan["compose"], runs))
    atomic_write_json(layout.summary, summary)
    write_report(layout.summary)
    return layout.summary
