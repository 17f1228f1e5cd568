"""``subjectgen generate``: sample a trained subject over prompt files into a folder with a manifest."""

from __future__ import annotations

import argparse

HELP = "sample images of a trained subject from prompt files"
OUT_IS_FOLDER = True  # cli.check_out_is_folder refuses an existing file there


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from subjectgen_training.generate import SCHEDULERS

    parser.add_argument("--base", default=None,
                        help="the SD 1.x base model: diffusers folder, Hub id or builtin:NAME (`subjectgen models`); "
                             "default: the base the --subject records")
    parser.add_argument("--subject", default=None, help="subject folder or Hub repo (omit to sample the base model)")
    parser.add_argument("--prompts", required=True,
                        help="prompt file, shipped set (actions_places, expressions, art_styles, accessories, "
                             "experiment) or prompt text; {} marks the subject, | separates prompts")
    parser.add_argument("--num-per-prompt", type=int, default=4, help="images per prompt (seeds S, S+1, ...; default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first image of each prompt (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (default: %(default)s)")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default: %(default)s)")
    parser.add_argument("--scheduler", choices=sorted(SCHEDULERS), default=None, help="default: the model's own")
    parser.add_argument("--resolution", type=int, default=None,
                        help="image side in pixels, a positive multiple of 8 (default: the model's native size)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per model call (default: %(default)s)")
    parser.add_argument("--scale", type=float, default=1.0, help="strength of the subject's weight deltas (default: %(default)s)")
    parser.add_argument("--lora", default=None,
                        help="a style LoRA (file, folder or Hub id) loaded beside the subject (default: none)")
    parser.add_argument("--lora-scale", type=float, default=1.0, help="strength of --lora (default: %(default)s)")
    parser.add_argument("--subject-phrase", default="{} person",
                        help="what {} in a prompt becomes with --subject; {} here is the subject's token "
                             "(default: '%(default)s', e.g. '<s1> person'; without --subject {} becomes "
                             "'a person'); the manifest records the text used as settings.subject_text")
    parser.add_argument("--negative-prompt", default=None, help="what the images should not show (default: none)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                        help="model dtype (default: auto = float16 on a CUDA GPU, float32 on the CPU)")
    parser.add_argument("--out", required=True, help="output folder (images + manifest.jsonl); reruns resume")


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
    from subjectgen_training.config_flags import namespace_values
    from subjectgen_training.generate import GenerateConfig, generate_images, read_manifest

    if args.base is None:
        args.base = recorded_base(args.subject)
    config = GenerateConfig(**namespace_values(args, GenerateConfig))
    out = generate_images(config)
    print(f"{len(read_manifest(out))} images and manifest.jsonl in {out}")
    return 0
