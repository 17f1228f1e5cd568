"""``subjectgen experiment NAME_OR_PATH --out DIR``: run subjects x setups end to end and write the report.

Every experiment -- Stable Diffusion 1.5, the tiny built-in model, the toy world -- is a YAML file for the one
runner (:mod:`subjectgen_training.experiment`); what differs between worlds plugs in through its registries (photo sources,
identity encoders, prompt scorers). The arguments are :class:`ExperimentArgs`' fields.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from subjectgen_training.config_flags import option

OUT_IS_FOLDER = True  # cli.check_out_is_folder refuses an existing file there


def _executors() -> tuple[str, ...]:
    from subjectgen_training.experiment.executors import EXECUTORS

    return tuple(EXECUTORS)


@dataclass(kw_only=True)
class ExecutorArgs:
    """Where the stages run (``subjectgen experiment`` and ``subjectgen batch``)."""

    executor: str = option("local", choices=_executors,
                           help="local: every stage in this process, in order; ray: each stage a Ray task, with the "
                                "config's `resources` (needs the 'ray' extra and --out on storage every worker sees; "
                                "README 'Scale out')")
    ray_address: str | None = option(None, metavar="ADDR", help="a running Ray cluster to join (auto, or host:port)",
                                     default_text="default: start a local Ray for the run and stop it after")


@dataclass(kw_only=True)
class ExperimentArgs(ExecutorArgs):
    config: str = option(positional=True, help="a shipped experiment (five_setups, five_setups_tiny, "
                                                "five_setups_toy, ...) or a YAML file's path")
    out: str = option(required=True, help="output folder; running again resumes where it stopped")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from subjectgen_training.config_flags import add_config_arguments

    add_config_arguments(parser, ExperimentArgs)


def executor_spec(args: argparse.Namespace):
    from subjectgen_training.config_flags import config_from_args
    from subjectgen_training.experiment.executors import ExecutorSpec

    given = config_from_args(args, ExecutorArgs)
    return ExecutorSpec(name=given.executor, ray_address=given.ray_address)


def run(args: argparse.Namespace) -> int:
    from subjectgen_training.experiment import load_experiment_config, run_experiment

    summary = run_experiment(load_experiment_config(args.config), args.out, executor_spec(args))
    folder = summary.parent
    print(f"comparison table: {folder / 'summary.md'}")
    if (folder / "report.html").is_file():
        print(f"report with image grids and the identity/prompt plot: {folder / 'report.html'}")
    print(f"numbers: {summary}")
    return 0
