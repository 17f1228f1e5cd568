"""``subjectgen experiment NAME_OR_PATH --out DIR``: run subjects x setups end to end and write the report.

Every experiment -- Stable Diffusion 1.5, the tiny built-in model, the toy world -- is a YAML file for the one
runner (:mod:`subjectgen_training.experiment`); what differs between worlds plugs in through its registries (photo sources,
identity encoders, prompt scorers).
"""

from __future__ import annotations

import argparse

HELP = "run subjects x setups end to end and write the report"
OUT_IS_FOLDER = True  # cli.check_out_is_folder refuses an existing file there


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a shipped experiment (five_setups, five_setups_tiny, five_setups_toy, ...) "
                                       "or a YAML file's path")
    parser.add_argument("--out", required=True, help="output folder; running again resumes where it stopped")


def run(args: argparse.Namespace) -> int:
    from subjectgen_training.experiment import load_experiment_config, run_experiment

    summary = run_experiment(load_experiment_config(args.config), args.out)
    folder = summary.parent
    print(f"comparison table: {folder / 'summary.md'}")
    if (folder / "report.html").is_file():
        print(f"report with image grids and the identity/prompt plot: {folder / 'report.html'}")
    print(f"numbers: {summary}")
    return 0
