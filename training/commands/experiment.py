"""``subjectgen experiment NAME_OR_PATH --out DIR``: run subjects x setups end to end and write the report.

A config whose top level says ``runner: "package.module:function"`` is handed to that function as
``function(config_path, out) -> summary path`` (how a world with its own stages, such as the toy world, plugs in).
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

HELP = "run subjects x setups end to end and write the report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a shipped experiment (five_setups, five_setups_tiny) or a YAML file's path")
    parser.add_argument("--out", required=True, help="output folder; running again resumes where it stopped")


def run(args: argparse.Namespace) -> int:
    from training.experiment import load_experiment_config, run_experiment
    from training.experiment.config import ExperimentConfigError, config_path, read_yaml

    path = config_path(args.config)
    data = read_yaml(path)
    if isinstance(data, dict) and "runner" in data:
        module_name, _, function = str(data["runner"]).partition(":")
        try:
            runner = getattr(importlib.import_module(module_name), function)
        except (ImportError, AttributeError) as error:
            raise ExperimentConfigError(f"{path}: runner {data['runner']!r} cannot be imported ({error}).") from error
        summary = Path(runner(path, Path(args.out)))
    else:
        summary = run_experiment(load_experiment_config(path), args.out)
    folder = summary.parent
    print(f"comparison table: {folder / 'summary.md'}")
    if (folder / "report.html").is_file():
        print(f"report with image grids and the identity/prompt plot: {folder / 'report.html'}")
    print(f"numbers: {summary}")
    return 0
