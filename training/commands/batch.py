"""``subjectgen batch PEOPLE.yaml --out DIR [--executor local|ray]``: prepare, train, preview and score many people.

The work happens in :func:`subjectgen_training.experiment.batch.run_batch`; ``DIR/batch.json`` records each person's status,
files, scores and error. Running the same command again skips finished stages: add a person and only that person runs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from subjectgen_training.commands.experiment import ExecutorArgs, executor_spec
from subjectgen_training.config_flags import option


@dataclass(kw_only=True)
class BatchArgs(ExecutorArgs):
    people: str = option(positional=True, metavar="PEOPLE.yaml", help="base, train (TrainConfig fields, method among "
                         "them) and people: [{name, photos, token}]")
    out: str = option(required=True, help="output folder (DIR/<name>/ per person, DIR/batch.json); running again "
                      "resumes and adds new people")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from subjectgen_training.config_flags import add_config_arguments

    add_config_arguments(parser, BatchArgs)


def run(args: argparse.Namespace) -> int:
    from subjectgen_diffusers.errors import SubjectgenError
    from subjectgen_training.experiment.batch import load_batch_config, run_batch

    path, failed = run_batch(load_batch_config(args.people), args.out, executor_spec(args))
    print(f"batch: {path}")
    if failed:
        names = ", ".join(f"{p['name']} ({p['status']}: {p['error']})" for p in failed)
        raise SubjectgenError(f"{len(failed)} person(s) did not finish: {names}. The others are done; fix the cause "
                              f"and run the same command again: only what is missing runs.")
    return 0
