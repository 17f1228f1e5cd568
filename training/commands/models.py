"""``subjectgen models``: the built-in model names every command that takes a model accepts (``builtin:<name>``)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--paths", action="store_true",
                        help="also print where each shipped model lies (the others are written on first use)")


def run(args: argparse.Namespace) -> int:
    from subjectgen_training.models.builtin_models import BUILDERS, DESCRIPTIONS, PREFIX, builtin_names, resolve_model

    names = builtin_names()
    width = max(len(name) for name in names)
    for name in names:
        short = name[len(PREFIX):]
        line = f"{name:<{width}}  {DESCRIPTIONS.get(short, '')}"
        if args.paths and short not in BUILDERS:
            line += f"\n{'':<{width}}  {resolve_model(name)}"
        print(line)
    print("\nGive one wherever a command takes a model, e.g. `subjectgen train --base builtin:toy-base --photos P "
          "--out S`.")
    return 0
