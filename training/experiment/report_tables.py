"""What both renderings of an experiment's report share: reading its JSON files, the score columns a summary has,
their cells and the one-line result per subject (the markdown and HTML renderers only lay these out)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from subjectgen_diffusers.errors import SubjectgenError

LIKENESS = "likeness"  # what the report calls the identity score, as the README does
METRICS = (("identity", LIKENESS), ("clip_text", "CLIP-T (prompt)"), ("clip_image", "CLIP-I (reference)"))


class ReportError(SubjectgenError):
    """The summary or results files cannot be read; the message says which and what to run."""


def format_summary_line(summary: dict[str, Any]) -> str:
    """One line: count, face-detection rate and mean ± std of each computed score."""
    parts = [f"{summary['count']} images"]
    if summary.get("face_detection_rate") is not None:
        parts.append(f"face detection {summary['face_detection_rate']:.0%}")
    for key, label in (*METRICS, ("prompt_following", "prompt_following")):
        if summary.get(key):
            parts.append(f"{label} {summary[key]['mean']:.3f} ± {summary[key]['std']:.3f}")
    return ", ".join(parts)


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ReportError(f"{what} {path} does not exist: run the experiment (or evaluate) first.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ReportError(f"{what} {path} is not valid JSON ({error}); rerun the stage that wrote it.") from error


def cell(stat: dict[str, Any] | None, percent: bool = False) -> str:
    if stat is None:
        return "–"
    if percent:
        return f"{stat:.0%}"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


PART_LABELS = {"identity": LIKENESS, "hidden_mark": "hidden mark", "traits": "traits", "prompt_following": "prompt-following",
               "clip_text": "CLIP-T", "clip_image": "CLIP-I", "background": "background found",
               "hat": "hat found", "glasses": "glasses found"}
ORDER = ("identity", "hidden_mark", "traits", "clip_text", "clip_image", "prompt_following", "background", "hat",
         "glasses")
CHECK_LABELS = {"background": "background", "hat": "hat", "glasses": "glasses"}


def columns(summaries: list[dict[str, Any]]) -> list[tuple[str, str | None, str]]:
    """The score columns the summaries have, as ``(label, group, key)``: identity, then its parts (the toy world's
    hidden mark and traits), CLIP-T and CLIP-I (unless the prompt scorer gives prompt-following instead), then
    prompt-following and the rate of each prompt check (background, hat, glasses)."""
    def keys(group: str) -> list[str]:
        seen: list[str] = []
        for summary in summaries:
            seen += [k for k in (summary.get(group) or {}) if k not in seen]
        return seen

    following = any(summary.get("prompt_following") for summary in summaries)
    clip = any(summary.get("clip_text") or summary.get("clip_image") for summary in summaries) or not following
    cols: list[tuple[str, str | None, str]] = [(LIKENESS, None, "identity")]
    cols += [(PART_LABELS.get(k, k), "identity_parts", k) for k in keys("identity_parts")]
    if clip:
        cols += [(label, None, key) for key, label in METRICS[1:]]
    if following:
        cols.append(("prompt-following", None, "prompt_following"))
    cols += [(f"{CHECK_LABELS.get(k, k)} asked, found", "prompt_checks", k) for k in keys("prompt_checks")]
    return cols


def column_stat(stats: dict[str, Any], group: str | None, key: str) -> dict[str, Any] | None:
    return (stats.get(group) or {}).get(key) if group else stats.get(key)


def table_header(cols) -> list[str]:
    return ["| setup | images | face detection | " + " | ".join(label for label, _, _ in cols) + " |",
            "| --- | ---: | ---: |" + " ---: |" * len(cols)]


def table_row(name: str, stats: dict[str, Any], cols=None) -> str:
    cols = cols if cols is not None else columns([stats])
    rate = stats.get("face_detection_rate")
    cells = [cell(column_stat(stats, group, key)) for _, group, key in cols]
    return (f"| {name} | {stats['count']} | {cell(rate, percent=True) if rate is not None else '–'} | "
            + " | ".join(cells) + " |")


def result_sentence(summary: dict[str, Any], subject: str) -> str | None:
    """One sentence per subject: the best setup's likeness (and prompt score) against the untrained baseline's."""
    runs = {run["setup"]: run["overall"] for run in summary["runs"] if run["subject"] == subject}
    base = runs.pop("baseline", None)
    mean = lambda stats, key: (stats.get(key) or {}).get("mean")  # noqa: E731
    scored = {name: stats for name, stats in runs.items() if mean(stats, "identity") is not None}
    if not scored:
        return None
    best = max(scored, key=lambda name: mean(scored[name], "identity"))
    prompt_key = "prompt_following" if mean(scored[best], "prompt_following") is not None else "clip_text"
    prompt_label = "prompt-following" if prompt_key == "prompt_following" else "CLIP-T"
    text = f"Result: {best} draws {subject} with likeness {mean(scored[best], 'identity'):.2f}"
    if base is not None and mean(base, "identity") is not None:
        text += f" against {mean(base, 'identity'):.2f} for the untrained baseline"
    if mean(scored[best], prompt_key) is not None:
        text += f", {prompt_label} {mean(scored[best], prompt_key):.2f}"
        if base is not None and mean(base, prompt_key) is not None:
            text += f" (baseline {mean(base, prompt_key):.2f})"
    return text + "."
