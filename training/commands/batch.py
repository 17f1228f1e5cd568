"""``subjectgen batch PEOPLE.yaml --out DIR [--executor local|ray]``: prepare, train, preview and score many people.

The work happens in :func:`subjectgen_training.batch.run_batch`; ``DIR/batch.json`` records each person's status,
files, scores and error. Running the same command again skips finished stages: add a person and only that person runs.
"""

from __future__ import annotations

import argparse

from subjectgen_training.commands.experiment import add_executor_arguments, executor_spec

HELP = "many people: prepare, train, preview and score each person of a PEOPLE.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("people", metavar="PEOPLE.yaml",
                        help="base, train (TrainConfig fields, method among them) and people: [{name, photos, token}]")
    parser.add_argument("--out", required=True, help="output folder (DIR/<name>/ per person, DIR/batch.json); "
                                                     "running again resumes and adds new people")
    add_executor_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from subjectgen_diffusers.errors import SubjectgenError
    from subjectgen_training.batch import load_batch_config, run_batch

    path, failed = run_batch(load_batch_config(args.people), args.out, executor_spec(args))
    print(f"batch: {path}")
    if failed:
        names = ", ".join(f"{p['name']} ({p['status']}: {p['error']})" for p in failed)
        raise SubjectgenError(f"{len(failed)} person(s) did not finish: {names}. The others are done; fix the cause "
                              f"and run the same command again: only what is missing runs.")
    return 0
