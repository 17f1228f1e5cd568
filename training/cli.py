"""``subjectgen``: a thin command line over typed functions.

Each subcommand lives in its own module exposing ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``; only the chosen subcommand's module is imported, so ``subjectgen --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from subjectgen_diffusers.errors import SubjectgenError

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("subjectgen_training.commands.demo", "the whole path offline: the shipped toy model learns a toy subject "
             "(--real-photos: sample photos of a person on a tiny random-weight model)"),
    "prepare": ("subjectgen_training.commands.prepare", "face-aware square crops and masks from a folder of photos"),
    "regularize": ("subjectgen_training.commands.regularize", "generate regularisation images with any text-to-image model"),
    "train": ("subjectgen_training.commands.train", "train a subject: Custom Diffusion, Cross Initialization or both"),
    "generate": ("subjectgen_training.commands.generate", "sample images of a trained subject from prompt files"),
    "evaluate": ("subjectgen_training.commands.evaluate", "identity, prompt fidelity and face-detection rate of images"),
    "experiment": ("subjectgen_training.commands.experiment", "run subjects x setups end to end and write the report"),
    "batch": ("subjectgen_training.commands.batch", "many people: prepare, train, preview and score each person of a "
              "PEOPLE.yaml (resumable; --executor ray spreads them over a cluster)"),
    "export": ("subjectgen_training.commands.export", "export a subject as a LoRA + embedding, diffusers textual-inversion/Custom Diffusion or A1111 files"),
    "compress": ("subjectgen_training.commands.compress", "store a subject's weight deltas as low-rank factors (--rank R or --energy E)"),
    "merge": ("subjectgen_training.commands.merge", "merge several subjects into one (Custom Diffusion's constrained merge): "
              "one folder, every token"),
    "push": ("subjectgen_training.commands.push", "upload a subject folder to the Hugging Face Hub with a model card"),
    "ui": ("subjectgen_training.commands.ui", "a web page (Gradio): photos -> subject -> pictures, on the toy model by default"),
    "models": ("subjectgen_training.commands.models", "list the built-in models (builtin:<name>), usable wherever a "
               "command takes a model"),
}


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
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module_name).add_arguments(sub_parser)
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
    module = importlib.import_module(COMMANDS[args.command][0])
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
