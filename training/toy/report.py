"""``report.html`` of a toy experiment: the subject's photos, the scores table, a likeness/prompt-following plot and
every row's image grid (prompts as rows, seeds as columns). Reads only what the runner wrote; opens offline."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from subjectgen_diffusers.atomic_io import atomic_write_text

from training.report import SETUP_COLOURS, scatter_svg

STYLE = ("body{font-family:sans-serif;margin:24px;max-width:1100px}table{border-collapse:collapse}"
         "td,th{border:1px solid #bbb;padding:4px 10px;text-align:right}th:first-child,td:first-child{text-align:left}"
         "img{image-rendering:pixelated}.photos img{width:96px;margin-right:6px}.grid{border:2px solid #0b3d91}")


def render_report(out: Path, rows: dict[str, dict[str, Any]], prompts: list[str], subject_phrase: str) -> str:
    esc = html.escape
    photos = sorted((out / "photos").glob("photo_*.png"))
    def cell(row: dict[str, Any], key: str, form: str = ".3f") -> str:
        return "—" if row.get(key) is None else format(row[key], form)

    table = ["<table><tr><th>setup</th><th>likeness</th><th>hidden mark</th><th>traits</th><th>prompt-following</th>"
             "<th>head found</th></tr>"]
    for name, row in rows.items():
        table.append(f"<tr><td>{esc(name)}</td><td>{cell(row, 'likeness')}</td><td>{cell(row, 'hidden_mark', '.0%')}</td>"
                     f"<td>{cell(row, 'traits', '.0%')}</td><td>{cell(row, 'prompt_following')}</td>"
                     f"<td>{cell(row, 'face_found', '.0%')}</td></tr>")
    table.append("</table>")
    points = [(name, row["prompt_following"], row["likeness"], SETUP_COLOURS[i % len(SETUP_COLOURS)])
              for i, (name, row) in enumerate(rows.items())]
    plot = scatter_svg(points, x_label="prompt-following (mean)", y_label="likeness (mean)")
    prompt_list = "".join(f"<li>{esc(p.format(subject_phrase))}</li>" for p in prompts)
    grids = "".join(f'<h3>{esc(name)}</h3><img class="grid" src="{esc(name)}/grid.png" alt="{esc(name)} images">'
                    for name in rows if (out / name / "grid.png").is_file())
    photo_tags = "".join(f'<img src="photos/{esc(p.name)}" alt="{esc(p.name)}">' for p in photos)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Toy-world experiment</title><style>{STYLE}"
            f"</style></head><body><h1>Toy-world five-setup experiment</h1>"
            f"<h2>The subject's photos</h2><p class='photos'>{photo_tags}</p>"
            "<p>Its mark and traits are never named in a caption: the new token must learn them from the photos.</p>"
            f"<h2>Scores</h2>{''.join(table)}<p>Likeness: toy identity against the photos (half the hidden mark, half "
            "skin, hair colour and hair style; no head found = 0); hidden mark and traits are those halves on their "
            "own. Prompt-following: the fraction of requested backgrounds and accessories that the pixel rules find. "
            "The baseline is the untrained base model prompted "
            f"with the class phrase.</p>{plot}<h2>Images</h2><p>Rows, top to bottom:</p><ol>{prompt_list}</ol>"
            f"{grids}</body></html>\n")


def write_report(out: str | Path, rows: dict[str, dict[str, Any]], prompts: list[str], subject_phrase: str) -> Path:
    out = Path(out)
    return atomic_write_text(out / "report.html", render_report(out, rows, prompts, subject_phrase))
