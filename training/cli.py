"""``subjectgen``: a thin command line over typed functions.

The commands are the table :data:`subjectgen_training.commands.COMMANDS` (name, help, extra, module); each module
exposes ``add_arguments(parser)`` and ``run(args) -> int``. Only the chosen command's module is imported, so
``subjectgen --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from subjectgen_diffusers.errors import SubjectgenError
from subjectgen_training.commands import COMMANDS


THREADS_HELP = ("torch CPU threads (default: auto = the cores not busy with other programs, from the load average; "
                "OMP_NUM_THREADS if set). OMP_WAIT_POLICY=PASSIVE is set unless you set it: on a shared CPU, "
                "spinning OpenMP threads made jobs many times slower (README, 'CPU threads')")
GLOBAL_OPTIONS_WITH_VALUE = ("--threads",)


def add_global_options(parser: argparse.ArgumentParser, *, in_command: bool = False) -> None:
    """Options every command takes, before or after its name (``subjectgen --threads 1 train`` or ``train --threads 1``)."""
    from subjectgen_training.threads import parse_threads

    # In a command's parser the default is SUPPRESS, so it never overwrites a value given before the command's name.
    default = argparse.SUPPRESS if in_command else None
    parser.add_argument("--threads", type=parse_threads, default=default, metavar="N|auto", help=THREADS_HELP)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="subjectgen", description="Teach Stable Diffusion a person from a few photos.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, entry in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=entry.help, description=entry.help)
        if name == command:
            importlib.import_module(entry.entry).add_arguments(sub_parser)
            add_global_options(sub_parser, in_command=True)
    return parser


def find_command(argv: list[str]) -> str | None:
    """The first word that is neither an option nor the value of a global option."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in GLOBAL_OPTIONS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = find_command(argv)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Before anything imports torch: OpenMP reads its wait policy once, when torch loads.
    from subjectgen_training.threads import configure_threads

    configure_threads(args.threads)
    from subjectgen_training.extras import require_command_extra

    try:  # before any library loads: a missing extra is named at once, not met as an ImportError later
        require_command_extra(args.command, args)
    except SubjectgenError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from tqdm.contrib.logging import logging_redirect_tqdm

    from subjectgen_training.quiet import quiet_libraries

    quiet_libraries()
    module = importlib.import_module(COMMANDS[args.command].entry)
    try:
        check_out_is_folder(module, args)  # before any model loads
        with logging_redirect_tqdm():  # log lines go above the progress bar instead of through it
            return int(module.run(args) or 0)
    except SubjectgenError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # a command whose rerun does not simply resume (train) says what is true for it
        message = getattr(module, "interrupted_message", lambda _args: INTERRUPTED)(args)
        print(message, file=sys.stderr)
        return 130


INTERRUPTED = "interrupted: finished files are kept; run the same command again to resume."


def check_out_is_folder(module, args: argparse.Namespace) -> None:
    """A command whose ``--out`` is a folder (its module sets ``OUT_IS_FOLDER``) refuses an existing file there."""
    from pathlib import Path

    out = getattr(args, "out", None)
    if getattr(module, "OUT_IS_FOLDER", False) and out is not None and Path(out).exists() and not Path(out).is_dir():
        raise SubjectgenError(f"--out {out} is an existing file; this command writes a folder there: choose a new "
                              "folder name (or remove the file).")


if __name__ == "__main__":
    sys.exit(main())
