"""``subjectgen regularize``: a thin CLI over :func:`subjectgen_training.sampling.regularize.generate_regularization`; the flags
are :class:`subjectgen_training.sampling.regularize.RegularizeConfig`'s fields.

Several GPUs: ``accelerate launch --num_processes 4 -m subjectgen_training regularize ...`` splits the images between them.
"""

from __future__ import annotations

import argparse

OUT_IS_FOLDER = True  # cli.check_out_is_folder refuses an existing file there


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from subjectgen_training.config_flags import add_config_arguments
    from subjectgen_training.sampling.regularize import RegularizeConfig

    add_config_arguments(parser, RegularizeConfig)


def run(args: argparse.Namespace) -> int:
    from subjectgen_training.config_flags import config_from_args
    from subjectgen_training.sampling.regularize import RegularizeConfig, generate_regularization, indices_on_disk

    out = generate_regularization(config_from_args(args, RegularizeConfig))
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(f"{len(indices_on_disk(out))} regularisation images in {out} (manifest.jsonl lists their prompts)")
    return 0
