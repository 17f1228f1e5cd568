"""``report.html``: an experiment's scores table, the likeness-against-prompt scatter plot (inline SVG) and the
image grid (thumbnails embedded, each linking to its full image), so the page opens offline."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from subjectgen_training.experiment.report_markdown import across_subjects_markdown, compose_markdown
from subjectgen_training.experiment.report_tables import LIKENESS, METRICS, cell, column_stat, columns, read_json, result_sentence

SETUP_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
GRID_FRAME = "#0b3d91"  # border of the image grid (the screenshot test looks for it)
PLOT_BACKGROUND = "#fff4d6"
THUMB = 96  # side of a grid thumbnail in pixels


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
        results = read_json(root / run["results"], "results file")
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

        markdown = "\n".join(across_subjects_markdown(summary))
        body.append("<h2>across subjects</h2><pre>" + html.escape(re.sub(r"^## ", "", markdown, flags=re.M)) + "</pre>")
    for subject in summary["subjects"]:
        runs = [run for run in summary["runs"] if run["subject"] == subject["name"]]
        refs = "".join(f'<a href="{_rel(p, root)}"><img src="{_thumbnail(p if Path(p).is_absolute() else root / p)}" '
                       f'width="{THUMB}" height="{THUMB}" alt="reference"></a>' for p in subject.get("reference", []))
        table = "".join(
            f"<tr><td style='color:{colours.get(r['setup'], '#000')}'>{html.escape(r['setup'])}</td>"
            f"<td>{r['overall']['count']}</td><td>{cell(r['overall'].get('face_detection_rate'), True) if r['overall'].get('face_detection_rate') is not None else '–'}</td>"
            + "".join(f"<td>{cell(column_stat(r['overall'], group, key))}</td>" for _, group, key in cols) + "</tr>"
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
