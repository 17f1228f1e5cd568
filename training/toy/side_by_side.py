"""The SD and SDXL toy worlds side by side, from two population runs' ``summary.json`` files:
``python -m subjectgen_training.toy.side_by_side docs/results/toy_population/summary.json
docs/results/toy_xl_population/summary.json``.

Per setup, the mean ± std over test subjects (std over subjects, ddof 0, as the runner's ``across_subjects``) of
likeness, hidden mark, traits, prompt-following, hat and glasses found; the SD column twice: over all its test
subjects and over the test subjects the SDXL run has too (the same faces). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

COLUMNS = {"likeness": lambda o: o["identity"]["mean"],
           "hidden mark": lambda o: o["identity_parts"]["hidden_mark"]["mean"],
           "traits": lambda o: o["identity_parts"]["traits"]["mean"],
           "prompt-following": lambda o: o["prompt_following"]["mean"],
           "hat found": lambda o: o["prompt_checks"]["hat"]["mean"],
           "glasses found": lambda o: o["prompt_checks"]["glasses"]["mean"]}


def test_subjects(summary: dict, group: str = "test") -> list[str]:
    return [s["name"] for s in summary["subjects"] if s["group"] == group]


def cell(summary: dict, setup: str, subjects: list[str], column: str) -> str:
    values = [COLUMNS[column](r["overall"]) for r in summary["runs"] if r["setup"] == setup and r["subject"] in subjects]
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def table(sd: dict, xl: dict, group: str = "test") -> str:
    xl_subjects, sd_subjects = test_subjects(xl, group), test_subjects(sd, group)
    shared = [s for s in sd_subjects if s in xl_subjects]
    models = [(f"SD ({len(sd_subjects)})", sd, sd_subjects), (f"SD ({len(shared)}, SDXL's)", sd, shared),
              (f"SDXL ({len(xl_subjects)})", xl, xl_subjects)]
    setups = [s["name"] for s in xl["setups"]]
    lines = [f"{group} subjects: SD all {', '.join(sd_subjects)}; SDXL (and SD's same faces) {', '.join(xl_subjects)}",
             "", "| setup | toy model | " + " | ".join(COLUMNS) + " |", "| --- | --- |" + " ---: |" * len(COLUMNS)]
    for setup in setups:
        for label, summary, subjects in models:
            lines.append(f"| {setup} | {label} | " + " | ".join(cell(summary, setup, subjects, c) for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sd", type=Path, help="summary.json of five_setups_toy_population")
    parser.add_argument("xl", type=Path, help="summary.json of five_setups_toy_xl_population")
    parser.add_argument("--group", default="test")
    args = parser.parse_args(argv)
    print(table(*(json.loads(p.read_text(encoding="utf-8")) for p in (args.sd, args.xl)), group=args.group))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
