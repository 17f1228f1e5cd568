"""The human report of an experiment: ``summary.md`` tables and ``report.html`` (grids, references, a scatter plot).

It reads only JSON — the experiment's ``summary.json`` and the ``results.json`` of each run that it points to — and
never recomputes a metric. Likeness is the face-similarity score (``identity`` in the JSON files), prompt fidelity
the CLIP text-image score (Celeb Basis, Yuan et al. 2023; Cross Initialization, Pang et al. 2024 plot the same
trade-off). The plot is an inline SVG written here, and the grid's thumbnails are embedded in the page (each links
to its full image beside it), so ``report.html`` opens offline and still shows its pictures when copied alone.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from subjectgen_diffusers.atomic_io import atomic_write_text
from subjectgen_diffusers.errors import SubjectgenError

SETUP_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
GRID_FRAME = "#0b3d91"  # border of the image grid (the screenshot test looks for it)
PLOT_BACKGROUND = "#fff4d6"
LIKENESS = "likeness"  # what the report calls the identity score, as the README does
THUMB = 96  # side of a grid thumbnail in pixels
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


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ReportError(f"{what} {path} does not exist: run the experiment (or evaluate) first.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ReportError(f"{what} {path} is not valid JSON ({error}); rerun the stage that wrote it.") from error


def _cell(stat: dict[str, Any] | None, percent: bool = False) -> str:
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


def _table_row(name: str, stats: dict[str, Any], cols=None) -> str:
    cols = cols if cols is not None else columns([stats])
    rate = stats.get("face_detection_rate")
    cells = [_cell(column_stat(stats, group, key)) for _, group, key in cols]
    return (f"| {name} | {stats['count']} | {_cell(rate, percent=True) if rate is not None else '–'} | "
            + " | ".join(cells) + " |")


def _across_subjects_markdown(summary: dict[str, Any]) -> list[str]:
    """Per subject group: the spread over subjects of each setup's per-subject mean, and how many beat the baseline."""
    lines: list[str] = []
    for group, table in (summary.get("across_subjects") or {}).items():
        setups = table["setups"]
        metrics: list[str] = []
        for entry in setups.values():
            metrics += [k for k in entry["scores"] if k not in metrics]
        metrics.sort(key=lambda m: (ORDER.index(m) if m in ORDER else len(ORDER), m))
        lines += [f"## {group} subjects ({len(table['subjects'])}): mean ± std over subjects", "",
                  "| setup | beats baseline | " + " | ".join(PART_LABELS.get(m, m) for m in metrics) + " |",
                  "| --- | ---: |" + " ---: |" * len(metrics)]
        for name, entry in setups.items():
            beats = f"{entry['beats_baseline']}/{len(table['subjects'])}" if "beats_baseline" in entry else "–"
            cells = [f"{entry['scores'][m]['mean']:.3f} ± {entry['scores'][m]['std']:.3f}" if m in entry["scores"]
                     else "–" for m in metrics]
            lines.append(f"| {name} | {beats} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def compose_markdown(summary: dict[str, Any]) -> list[str]:
    """Per group of composed subjects: likeness and prompt-following of each subject under every condition, and
    each condition's difference from ``alone`` (the experiment's ``compose`` stage)."""
    compose = summary.get("compose")
    if not compose:
        return []
    conditions = compose["conditions"]
    lines = ["## several subjects in one pipeline", "",
             f"Each subject trained alone with `{compose['setup']}`; `added`: the group's subjects loaded together "
             "(deltas summed); `merged`: Custom Diffusion's constrained merge of the group; `joint`: one run on all "
             "the group's photos, one token each. Likeness / prompt-following, mean over the subject's images; "
             "Δ: difference from alone.", ""]
    for group in compose["groups"]:
        lines += [f"### {' + '.join(group['subjects'])}", "",
                  "| subject | " + " | ".join(conditions) + " | " + " | ".join(f"Δ {c}" for c in conditions[1:]) + " |",
                  "| --- |" + " ---: |" * (2 * len(conditions) - 1)]
        for name, row in group["rows"].items():
            def pair(scores: dict[str, Any]) -> str:
                return " / ".join("–" if v is None else f"{v:.3f}" for v in (scores["likeness"], scores["prompt_following"]))

            def delta(condition: str) -> str:
                base, other = row["alone"], row[condition]
                return " / ".join("–" if a is None or b is None else f"{b - a:+.3f}"
                                  for a, b in ((base["likeness"], other["likeness"]),
                                               (base["prompt_following"], other["prompt_following"])))

            lines.append(f"| {name} | " + " | ".join(pair(row[c]) for c in conditions) + " | "
                         + " | ".join(delta(c) for c in conditions[1:]) + " |")
        merge = group.get("merge") or {}
        if merge:
            lines.append("")
            lines.append(f"Merge: {merge['regularization_captions']} regularisation captions, largest relative "
                         f"constraint error {merge['max_relative_constraint_error']:.1e}.")
        lines.append("")
    return lines


def _thumbnail(path: Path) -> str:
    """The image as a ``data:`` URI (downscaled to the thumbnail size when larger): the page holds its pictures."""
    import base64
    import io

    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if max(image.size) > THUMB:
                image.thumbnail((THUMB, THUMB))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", optimize=True)
    except OSError:
        return html.escape(Path(path).as_posix(), quote=True)  # a missing image: the browser shows its alt text
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


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


def render_markdown(summary: dict[str, Any]) -> str:
    """Per subject: a table of setups (overall scores), then identity per setup and prompt."""
    lines = [f"# {summary.get('experiment', 'experiment')}", ""]
    if summary.get("description"):
        lines += [summary["description"], ""]
    lines += [f"_{summary.get('protocol', '')}_", ""]
    results = [sentence for subject in summary["subjects"] if (sentence := result_sentence(summary, subject["name"]))]
    if results:
        lines += [" ".join(results), ""]
    cols = columns([run["overall"] for run in summary["runs"]])
    if summary.get("identity_measure"):
        lines += [f"Likeness: {summary['identity_measure']}.", ""]
    if summary.get("prompt_measure") == "prompt-following":
        lines += ["Prompt-following: the share of the requested background and accessory that the pixel rules find; "
                  "`X asked, found`: the rate at which that request was met. Mean ± std over images.", ""]
    else:
        lines += ["CLIP-T: cosine of image and prompt (subject token replaced by a plain phrase); CLIP-I: mean cosine "
                  "with the reference photos. Mean ± std.", ""]
    lines += compose_markdown(summary)
    if len(summary["subjects"]) > 1 and summary.get("per_setup"):
        lines += _across_subjects_markdown(summary)
        lines += ["## all subjects' images pooled", "", *table_header(cols)]
        lines += [_table_row(name, stats, cols) for name, stats in summary["per_setup"].items()]
        lines.append("")
    for subject in summary["subjects"]:
        runs = [run for run in summary["runs"] if run["subject"] == subject["name"]]
        title = subject["name"] + (f" ({subject['group']})" if subject.get("group") else "")
        lines += [f"## {title}", "", *table_header(cols)]
        lines += [_table_row(run["setup"], run["overall"], cols) for run in runs]
        prompts = summary.get("prompts", [])
        if prompts and runs:
            lines += ["", "Likeness per prompt (mean):", "",
                      "| setup | " + " | ".join(p.replace("|", "/") for p in prompts) + " |",
                      "| --- |" + " ---: |" * len(prompts)]
            for run in runs:
                cells = []
                for prompt in prompts:
                    stat = run.get("per_prompt", {}).get(prompt, {}).get("identity")
                    cells.append(f"{stat['mean']:.3f}" if stat else "–")
                lines.append(f"| {run['setup']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def scatter_svg(points: list[tuple[str, float | None, float | None, str]], width: int = 420, height: int = 300,
                x_label: str = "prompt score (CLIP-T, mean)", y_label: str = f"{LIKENESS} (mean)") -> str:
    """Likeness (y) against prompt score (x), one labelled dot per setup; axes span the data with a margin, never
    past 1.0 (no score exceeds it) nor below 0.0 when every score is positive."""
    left, right, top, bottom = 56, 130, 16, 44
    drawn = [(label, x, y, colour) for label, x, y, colour in points if x is not None and y is not None]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="scatter" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="likeness against prompt score per setup">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="{PLOT_BACKGROUND}"/>']
    plot_w, plot_h = width - left - right, height - top - bottom
    if not drawn:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="13">prompt score not '
                     "computed (run with a CLIP model)</text></svg>")
        return "".join(parts)
    xs, ys = [p[1] for p in drawn], [p[2] for p in drawn]
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = min(0.0, min(ys)), max(ys)
    x_pad, y_pad = (x_hi - x_lo) * 0.15 or 0.05, (y_hi - y_lo) * 0.1 or 0.05
    x_lo, x_hi, y_lo, y_hi = x_lo - x_pad, x_hi + x_pad, y_lo, y_hi + y_pad
    if max(xs) <= 1.0:  # scores live in [0, 1]: the axes stop there
        x_hi = min(x_hi, 1.0)
    if min(xs) >= 0.0:
        x_lo = max(x_lo, 0.0)
    if max(ys) <= 1.0:
        y_hi = min(y_hi, 1.0)
    if x_hi <= x_lo:
        x_lo = x_hi - 0.1
    if y_hi <= y_lo:
        y_lo = y_hi - 0.1

    def sx(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * plot_w

    def sy(y: float) -> float:
        return top + (1 - (y - y_lo) / (y_hi - y_lo)) * plot_h

    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="white" stroke="#444"/>')
    for i in range(5):
        fx, fy = x_lo + (x_hi - x_lo) * i / 4, y_lo + (y_hi - y_lo) * i / 4
        parts.append(f'<text x="{sx(fx):.1f}" y="{top + plot_h + 14}" font-size="10" text-anchor="middle">{fx:.3f}</text>')
        parts.append(f'<text x="{left - 4}" y="{sy(fy) + 3:.1f}" font-size="10" text-anchor="end">{fy:.2f}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" font-size="12" text-anchor="middle">'
                 f"{html.escape(x_label)}</text>")
    parts.append(f'<text transform="translate(14 {top + plot_h / 2}) rotate(-90)" font-size="12" '
                 f'text-anchor="middle">{html.escape(y_label)}</text>')
    for index, (label, x, y, colour) in enumerate(drawn):
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="7" fill="{colour}" stroke="white" stroke-width="1.5"><title>'
                     f"{html.escape(label)}: prompt {x:.3f}, {LIKENESS} {y:.3f}</title></circle>")
        legend_y = top + 8 + index * 18
        parts.append(f'<circle cx="{width - right + 14}" cy="{legend_y}" r="6" fill="{colour}"/>')
        parts.append(f'<text x="{width - right + 24}" y="{legend_y + 4}" font-size="12">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _rel(path: str | Path, root: Path) -> str:
    path = Path(path)
    path = path if path.is_absolute() else root / path
    return html.escape(Path(os.path.relpath(path, root)).as_posix(), quote=True)


def _image_grid(summary: dict[str, Any], runs: list[dict[str, Any]], root: Path, per_cell: int) -> str:
    prompts = summary.get("prompts", [])
    head = "".join(f"<th>{html.escape(p)}</th>" for p in prompts)
    rows = []
    for run in runs:
        results = _read_json(root / run["results"], "results file")
        images_dir = Path(run.get("images") or results["settings"]["images"])
        by_prompt: dict[str, list[dict[str, Any]]] = {}
        for entry in results["images"]:
            by_prompt.setdefault(entry.get("prompt") or "", []).append(entry)
        cells = []
        for prompt in prompts:
            thumbs = []
            entries = by_prompt.get(prompt, [])
            for entry in entries[:per_cell]:
                likeness = "–" if entry.get("identity") is None else f"{entry['identity']:.2f}"
                image = images_dir / entry["file"]  # relative paths are relative to the report's folder
                thumbs.append(f'<a href="{_rel(image, root)}"><img src="{_thumbnail(image if image.is_absolute() else root / image)}" width="{THUMB}" '
                              f'height="{THUMB}" title="{LIKENESS} {likeness}" '
                              f'alt="{html.escape(entry["file"], quote=True)}"></a>')
            shown = (f'<div class="shown">{min(per_cell, len(entries))} of {len(entries)} images shown</div>'
                     if len(entries) > per_cell else "")
            cells.append(f"<td>{''.join(thumbs) or '–'}{shown}</td>")
        rows.append(f"<tr><th>{html.escape(run['setup'])}</th>{''.join(cells)}</tr>")
    return (f'<table class="grid" style="border:4px solid {GRID_FRAME}"><tr><th>setup \\ prompt</th>{head}</tr>'
            + "".join(rows) + "</table>")


def render_html(summary: dict[str, Any], root: Path, per_cell: int = 2) -> str:
    """The whole report page; image paths are relative to ``root`` (the folder report.html is written to)."""
    colours = {setup["name"]: SETUP_COLOURS[i % len(SETUP_COLOURS)] for i, setup in enumerate(summary["setups"])}
    results = [sentence for subject in summary["subjects"] if (sentence := result_sentence(summary, subject["name"]))]
    body = [f"<h1>{html.escape(summary.get('experiment', 'experiment'))}</h1>",
            *(f'<p class="result"><b>{html.escape(sentence)}</b></p>' for sentence in results),
            f"<p>{html.escape(summary.get('description', ''))}</p>",
            f"<p><em>{html.escape(summary.get('protocol', ''))}</em></p>"]
    if summary.get("identity_measure"):
        body.append(f"<p>Likeness: {html.escape(summary['identity_measure'])}.</p>")
    setups = "".join(f"<li><b style='color:{colours[s['name']]}'>{html.escape(s['name'])}</b>: "
                     f"{html.escape(s.get('description', ''))}</li>" for s in summary["setups"])
    body.append(f"<ul>{setups}</ul>")
    cols = columns([run["overall"] for run in summary["runs"]])
    prompt_key = "clip_text" if any(label == METRICS[1][1] for label, _, _ in cols) else "prompt_following"
    prompt_label = "prompt score (CLIP-T, mean)" if prompt_key == "clip_text" else "prompt-following (mean)"
    if summary.get("compose"):
        import re

        markdown = "\n".join(compose_markdown(summary))
        body.append("<h2>several subjects in one pipeline</h2><pre>"
                    + html.escape(re.sub(r"^#+ ", "", markdown, flags=re.M)) + "</pre>")
    if len(summary["subjects"]) > 1 and summary.get("across_subjects"):
        import re

        markdown = "\n".join(_across_subjects_markdown(summary))
        body.append("<h2>across subjects</h2><pre>" + html.escape(re.sub(r"^## ", "", markdown, flags=re.M)) + "</pre>")
    for subject in summary["subjects"]:
        runs = [run for run in summary["runs"] if run["subject"] == subject["name"]]
        refs = "".join(f'<a href="{_rel(p, root)}"><img src="{_thumbnail(p if Path(p).is_absolute() else root / p)}" '
                       f'width="{THUMB}" height="{THUMB}" alt="reference"></a>' for p in subject.get("reference", []))
        table = "".join(
            f"<tr><td style='color:{colours.get(r['setup'], '#000')}'>{html.escape(r['setup'])}</td>"
            f"<td>{r['overall']['count']}</td><td>{_cell(r['overall'].get('face_detection_rate'), True) if r['overall'].get('face_detection_rate') is not None else '–'}</td>"
            + "".join(f"<td>{_cell(column_stat(r['overall'], group, key))}</td>" for _, group, key in cols) + "</tr>"
            for r in runs
        )
        header = "".join(f"<th>{html.escape(label)}</th>" for label, _, _ in cols)
        points = [(r["setup"], (r["overall"].get(prompt_key) or {}).get("mean"),
                   (r["overall"].get("identity") or {}).get("mean"), colours.get(r["setup"], "#000")) for r in runs]
        body += [f"<h2>{html.escape(subject['name'])}</h2>", f'<div class="refs"><h3>reference photos</h3>{refs}</div>',
                 f'<table class="scores"><tr><th>setup</th><th>images</th><th>face detection</th>{header}</tr>{table}</table>',
                 f"<h3>{LIKENESS} against prompt score</h3>", scatter_svg(points, x_label=prompt_label),
                 "<h3>samples (setup × prompt)</h3>", _image_grid(summary, runs, root, per_cell)]
    style = ("body{font-family:sans-serif;margin:16px;background:#fafafa}table{border-collapse:collapse;margin:8px 0}"
             "td,th{border:1px solid #bbb;padding:4px;font-size:12px;vertical-align:top}"
             ".grid th{max-width:140px}img{margin:1px;image-rendering:pixelated}.shown{font-size:11px;color:#555}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(summary.get('experiment', ''))}"
            f"</title><style>{style}</style></head><body>{''.join(body)}</body></html>")


def write_report(summary_path: str | Path, per_cell: int = 2) -> tuple[Path, Path]:
    """Write ``summary.md`` and ``report.html`` beside ``summary.json``; return both paths."""
    summary_path = Path(summary_path)
    summary = _read_json(summary_path, "experiment summary")
    for key in ("subjects", "setups", "runs"):
        if key not in summary:
            raise ReportError(f"{summary_path} lacks `{key}`: it is not an experiment summary.json.")
    root = summary_path.parent
    markdown = atomic_write_text(root / "summary.md", render_markdown(summary))
    page = atomic_write_text(root / "report.html", render_html(summary, root, per_cell))
    return markdown, page
