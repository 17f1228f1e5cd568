"""The experiment's numbers across runs, read from the finished runs' ``results.json``: each setup's scores pooled
over every subject's images, and per subject group the spread over subjects (and against each subject's baseline).
"""

from __future__ import annotations

import json
from typing import Any

from subjectgen_training.experiment.config import ExperimentConfig
from subjectgen_training.experiment.stages import BASELINE, ExperimentLayout


def pooled_by_setup(layout: ExperimentLayout, config: ExperimentConfig, runs: list[dict[str, Any]]) -> dict:
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


def identity_measure(layout: ExperimentLayout, runs: list[dict[str, Any]]) -> str | None:
    if not runs:
        return None
    return json.loads((layout.root / runs[0]["results"]).read_text(encoding="utf-8"))["settings"].get("identity_measure")


def prompt_measure(layout: ExperimentLayout, runs: list[dict[str, Any]]) -> str | None:
    if not runs:
        return None
    return json.loads((layout.root / runs[0]["results"]).read_text(encoding="utf-8"))["settings"].get("prompt_measure")


