"""``subjectgen regularize``: a thin CLI over :func:`subjectgen_training.regularize.generate_regularization`.

Several GPUs: ``accelerate launch --num_processes 4 -m subjectgen_training regularize ...`` splits the images between them.
"""

from __future__ import annotations

import argparse

HELP = "generate regularisation images with any text-to-image model"
OUT_IS_FOLDER = True  # cli.check_out_is_folder refuses an existing file there


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="diffusers text-to-image model: folder, Hub id (SD 1.x/2.x, SDXL) or builtin:NAME "
                        "(`subjectgen models`)")
    parser.add_argument("--lora", default=None, metavar="PATH_OR_ID", help="LoRA file, folder, Hub id or builtin:NAME for --model")
    parser.add_argument("--lora-scale", type=float, default=1.0, metavar="S", help="LoRA strength (default 1.0)")
    parser.add_argument("--prompt", required=True, metavar="TEXT", help='e.g. "a photo of a person"')
    parser.add_argument("--negative-prompt", default=None, metavar="TEXT",
                        help="what the images should not show (default: none)")
    parser.add_argument("--num", type=int, required=True, metavar="N", help="images in the set (a larger N later extends it)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (images + manifest.jsonl)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="image i uses a seed derived from S and i")
    parser.add_argument("--steps", type=int, default=50, metavar="K", help="denoising steps (default 50)")
    parser.add_argument("--guidance", type=float, default=6.0, metavar="G", help="classifier-free guidance (default 6)")
    parser.add_argument("--resolution", type=int, default=None, metavar="R",
                        help="square image size (default: the model's native size)")
    parser.add_argument("--batch-size", type=int, default=4, metavar="B",
                        help="images per model call (default: %(default)s)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                        help="weights dtype (auto: fp16 on CUDA, fp32 on CPU)")


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from subjectgen_training.config_flags import namespace_values
    from subjectgen_training.regularize import RegularizeConfig, generate_regularization, indices_on_disk

    config = RegularizeConfig(**namespace_values(args, RegularizeConfig))
    out = generate_regularization(config)
    if PartialState().is_main_process:
        print(f"{len(indices_on_disk(out))} regularisation images in {out} (manifest.jsonl lists their prompts)")
    return 0
