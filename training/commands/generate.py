"""``subjectgen generate``: sample a trained subject over prompt files into a folder with a manifest.

The flags are :class:`subjectgen_training.sampling.generate.GenerateConfig`'s fields (help, kind and default live with each)."""

from __future__ import annotations

import argparse

OUT_IS_FOLDER = True  # cli.check_out_is_folder refuses an existing file there


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from subjectgen_training.config_flags import add_config_arguments
    from subjectgen_training.sampling.generate import GenerateConfig

    add_config_arguments(parser, GenerateConfig)


def recorded_base(subject: str | None) -> str:
    """The base model a local subject folder records (``builtin:toy-base`` for one trained on the toy model)."""
    from pathlib import Path

    from subjectgen_diffusers.errors import SubjectgenError
    from subjectgen_diffusers.subject_check import check_subject_files

    found = check_subject_files(subject) if subject and Path(subject).is_dir() else None
    if found is None or found[0].base_model in (None, "", "unknown"):
        raise SubjectgenError("give --base MODEL (a diffusers folder, Hub id or builtin:NAME); only a local --subject "
                              "folder that records its base model can stand in for it.")
    return found[0].base_model


def run(args: argparse.Namespace) -> int:
    from subjectgen_training.config_flags import config_from_args
    from subjectgen_training.sampling.generate import GenerateConfig, generate_images, read_manifest

    base = args.base if args.base is not None else recorded_base(args.subject)
    config = config_from_args(args, GenerateConfig, base=base)
    out = generate_images(config)
    print(f"{len(read_manifest(out))} images and manifest.jsonl in {out}")
    return 0
