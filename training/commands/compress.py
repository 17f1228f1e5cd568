"""``subjectgen compress``: store a subject's Custom Diffusion deltas as low-rank factors (a few MB instead of 37)."""

from __future__ import annotations

import argparse
from pathlib import Path

OUT_IS_FOLDER = True  # cli.check_out_is_folder refuses an existing file there


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("subject", type=Path, help="subject folder (subject_config.json + subject.safetensors)")
    parser.add_argument("--out", type=Path, required=True, help="new output folder for the compressed subject")
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument("--rank", type=int, help="the same rank R for every delta")
    choice.add_argument("--energy", type=float,
                        help="per delta, the smallest rank keeping this fraction (0, 1] of the squared singular values")
    parser.add_argument("--dtype", choices=("float16", "float32"), default=None,
                        help="dtype of the stored factors (default: the source subject's)")


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from subjectgen_diffusers.compress import COMPRESS_REPORT, compress_subject

    dtype = getattr(torch, args.dtype) if args.dtype else None
    out = compress_subject(args.subject, args.out, rank=args.rank, energy=args.energy, dtype=dtype)
    report = json.loads((out / COMPRESS_REPORT).read_text(encoding="utf-8"))
    ranks = [entry["rank"] for entry in report["layers"].values()]
    size = (out / "subject.safetensors").stat().st_size
    before = (args.subject / "subject.safetensors").stat().st_size
    print(f"{out}: {len(ranks)} deltas, rank {min(ranks)}-{max(ranks)}, largest relative error "
          f"{report['max_relative_error']:.4f}; {size / 2**20:.2f} MiB (was {before / 2**20:.2f} MiB)")
    return 0
