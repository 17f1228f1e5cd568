"""``subjectgen prepare``: a thin CLI over :func:`subjectgen_training.prepare.prepare_photos` (needs the ``face`` extra)."""

from __future__ import annotations

import argparse

HELP = "face-aware square crops and masks from a folder of photos"
OUT_IS_FOLDER = True  # cli.check_out_is_folder refuses an existing file there


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("photos", metavar="PHOTOS", help="folder of the subject's photos")
    parser.add_argument("out", metavar="OUT", help="folder for the crops, their face masks and prepare.json")
    parser.add_argument("--resolution", type=int, default=512, metavar="R", help="side of the square crops in pixels, a positive multiple of 8 (default 512)")
    parser.add_argument("--margin", type=float, default=1.0, metavar="M",
                        help="space on each side of the face in face widths; the crop is 1 + 2M faces wide (default 1)")
    parser.add_argument("--min-face", type=int, default=64, metavar="PX",
                        help="drop photos whose face is narrower than this many pixels (default 64)")


def run(args: argparse.Namespace) -> int:
    from subjectgen_training.config_flags import namespace_values
    from subjectgen_training.prepare import PrepareConfig, PrepareError, format_report, prepare_photos

    config = PrepareConfig(**namespace_values(args, PrepareConfig))
    report = prepare_photos(config)
    print(format_report(report))
    print(f"report: {config.out / 'prepare.json'}")
    if report["kept"] == 0:
        raise PrepareError(f"no photo in {config.photos} was kept; see the reasons above and add usable photos.")
    return 0
