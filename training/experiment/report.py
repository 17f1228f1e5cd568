"""The human report of an experiment: ``summary.md`` tables and ``report.html`` (grids, references, a scatter plot).

It reads only JSON — the experiment's ``summary.json`` and the ``results.json`` of each run that it points to — and
never recomputes a metric. Likeness is the face-similarity score (``identity`` in the JSON files), prompt fidelity
the CLIP text-image score (Celeb Basis, Yuan et al. 2023; Cross Initialization, Pang et al. 2024 plot the same
trade-off). The plot is an inline SVG written here, and the grid's thumbnails are embedded in the page (each links
to its full image beside it), so ``report.html`` opens offline and still shows its pictures when copied alone.

The tables and what both renderings read: :mod:`subjectgen_training.experiment.report_tables`; the markdown:
:mod:`subjectgen_training.experiment.report_markdown`; the page: :mod:`subjectgen_training.experiment.report_html`.
"""

from __future__ import annotations

from pathlib import Path

from subjectgen_diffusers.atomic_io import atomic_write_text
from subjectgen_training.experiment.report_html import GRID_FRAME, PLOT_BACKGROUND, SETUP_COLOURS, render_html  # noqa: F401
from subjectgen_training.experiment.report_markdown import compose_markdown, render_markdown  # noqa: F401
from subjectgen_training.experiment.report_tables import ReportError, format_summary_line, read_json  # noqa: F401


def write_report(summary_path: str | Path, per_cell: int = 2) -> tuple[Path, Path]:
    """Write ``summary.md`` and ``report.html`` beside ``summary.json``; return both paths."""
    summary_path = Path(summary_path)
    summary = read_json(summary_path, "experiment summary")
    for key in ("subjects", "setups", "runs"):
        if key not in summary:
            raise ReportError(f"{summary_path} lacks `{key}`: it is not an experiment summary.json.")
    root = summary_path.parent
    markdown = atomic_write_text(root / "summary.md", render_markdown(summary))
    page = atomic_write_text(root / "report.html", render_html(summary, root, per_cell))
    return markdown, page
