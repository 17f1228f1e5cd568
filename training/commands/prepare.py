"""``subjectgen prepare``: a thin CLI over :func:`subjectgen_training.data.prepare.prepare_photos` (needs the ``face`` extra);
the arguments are :class:`subjectgen_training.data.prepare.PrepareConfig`'s fields."""

from __future__ import annotations

import argparse

OUT_IS_FOLDER = True  # cli.check_out_is_folder refuses an existing file there


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from subjectgen_training.config_flags import add_config_arguments
    from subjectgen_training.data.prepare import PrepareConfig

    add_config_arguments(parser, PrepareConfig)


def run(args: argparse.Namespace) -> int:
    from subjectgen_training.config_flags import config_from_args
    from subjectgen_training.data.prepare import PrepareConfig, PrepareError, format_report, prepare_photos

    config = config_from_args(args, PrepareConfig)
    report = prepare_photos(config)
    print(format_report(report))
    print(f"report: {config.out / 'prepare.json'}")
    if report["kept"] == 0:
        raise PrepareError(f"no photo in {config.photos} was kept; see the reasons above and add usable photos.")
    return 0
