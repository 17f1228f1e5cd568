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
    add_executor_arguments(parser)


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """``--executor`` and ``--ray-address`` (also used by ``subjectgen batch``)."""
    from subjectgen_training.experiment.executors import EXECUTORS

    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="local: every stage in this process, in order (default); ray: each stage a Ray task, "
                             "with the config's `resources` (needs the 'ray' extra and --out on storage every worker "
                             "sees; README 'Scale out')")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="a running Ray cluster to join (auto, or host:port); default: start a local Ray for the "
                             "run and stop it after")


def executor_spec(args: argparse.Namespace):
    from subjectgen_training.experiment.executors import ExecutorSpec

    return ExecutorSpec(name=args.executor, ray_address=args.ray_address)


def run(args: argparse.Namespace) -> int:
    from subjectgen_training.experiment import load_experiment_config, run_experiment

    summary = run_experiment(load_experiment_config(args.config), args.out, executor_spec(args))
    folder = summary.parent
    print(f"comparison table: {folder / 'summary.md'}")
    if (folder / "report.html").is_file():
        print(f"report with image grids and the identity/prompt plot: {folder / 'report.html'}")
    print(f"numbers: {summary}")
    return 0
