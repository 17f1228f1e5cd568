"""``subjectgen export``: a subject to a LoRA + embedding (A1111/Forge, ComfyUI, diffusers), to diffusers textual
inversion + Custom Diffusion files, or to an A1111 embedding."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("subject", type=Path, help="subject folder (subject_config.json + subject.safetensors)")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder (or, for a1111, a file ending in .safetensors or .pt)")
    parser.add_argument("--format", choices=("diffusers", "a1111", "lora"), default="diffusers",
                        help="lora: kohya LoRA + embedding + diffusers LoRA + export.json (a new folder); "
                        "diffusers: learned_embeds.safetensors + pytorch_custom_diffusion_weights.safetensors; "
                        "a1111: an embedding file")
    rank = parser.add_mutually_exclusive_group()
    rank.add_argument("--rank", type=int, default=None, help="lora: factor rank R (default: exact, full rank)")
    rank.add_argument("--energy", type=float, default=None,
                      help="lora: per delta, the smallest rank keeping this fraction (0, 1] of the squared singular values")
    parser.add_argument("--dtype", choices=("float16", "float32"), default=None,
                        help="lora: dtype of the written tensors (default: the subject's)")
    parser.add_argument("--base", default=None,
                        help="base model (folder, Hub id or builtin:NAME) for Custom Diffusion full weights; default: the "
                        "subject's base_model. With --format lora it is optional: it sizes the bias-delta note and measures "
                        "what each reader that skips bias deltas leaves out")
    parser.add_argument("--token-only", action="store_true",
                        help="a1111: export only the token vectors of a subject that also has weight deltas")


def _base_pipeline(base: str):
    """The base model as a pipeline (for the bias-delta note and the readers' dropped share); None if it will not load."""
    from diffusers import StableDiffusionPipeline

    from subjectgen_diffusers.errors import SubjectgenError
    from subjectgen_training.models.builtin_models import resolve_model

    try:
        return StableDiffusionPipeline.from_pretrained(resolve_model(base), safety_checker=None, feature_extractor=None,
                                                       requires_safety_checker=False)
    except (OSError, ValueError, SubjectgenError) as error:
        print(f"note: could not load the base model {base!r} ({error}); the bias-delta note gives ‖Δb‖ alone and the "
              "readers' dropped share is not measured")
        return None


def _export_lora(args: argparse.Namespace, subject) -> list[Path]:
    import torch

    from subjectgen_diffusers.atomic_io import atomic_write_json
    from subjectgen_diffusers.export_readers import (DROPPED_SHARE_DEFINITION, bias_effect_share, format_table,
                                                     reader_table)
    from subjectgen_diffusers.lora_export import export_lora

    pipe = _base_pipeline(args.base) if subject.bias_deltas and args.base else None
    dtype = getattr(torch, args.dtype) if args.dtype else None
    result = export_lora(subject, args.out, rank=args.rank, energy=args.energy, dtype=dtype,
                         base_unet=pipe.unet if pipe is not None else None)
    for note in result.notes:
        print(f"note: {note}")
    share = bias_effect_share(pipe, subject) if pipe is not None else None
    readers = reader_table(subject, result, share)
    print(format_table(readers))
    report = json.loads(result.report.read_text(encoding="utf-8"))
    report.update(readers=readers, dropped_share_definition=DROPPED_SHARE_DEFINITION)
    atomic_write_json(result.report, report)
    return result.written


def a1111_file(out: Path, token: str) -> Path:
    """The embedding file ``--out`` names: itself when it ends in .safetensors/.pt, else ``<out>/<name>.safetensors``."""
    from subjectgen_diffusers.lora_export import file_stem

    return out if out.suffix in (".safetensors", ".pt") else out / f"{file_stem(token)}.safetensors"


def check_out(args: argparse.Namespace, token: str | None) -> None:
    """What ``--out`` names must not hold anything already: nothing is overwritten silently (said before any load)."""
    from subjectgen_diffusers.compress import check_new_folder
    from subjectgen_diffusers.errors import SubjectgenError

    if args.format == "a1111":
        target = a1111_file(args.out, token or "subject")
        if args.out.is_file() and target != args.out:
            raise SubjectgenError(f"--out {args.out} is an existing file; an A1111 embedding is written to a new file "
                                  "ending in .safetensors or .pt, or into a folder.")
        if target.exists():
            raise SubjectgenError(f"{target} already exists; choose another --out or remove it first.")
    elif args.out.is_file():  # diffusers and lora write a new folder
        raise SubjectgenError(f"--out {args.out} is an existing file; --format {args.format} writes a new folder "
                              "there: choose a new folder name.")
    else:
        check_new_folder(args.out)


def run(args: argparse.Namespace) -> int:
    from subjectgen_diffusers.errors import SubjectgenError
    from subjectgen_diffusers.export import export_a1111, export_diffusers, load_base_unet
    from subjectgen_diffusers.hub import is_repo_id
    from subjectgen_diffusers.subject_check import check_subject_files, check_subject_fits_base
    from subjectgen_diffusers.subject_format import Subject
    from subjectgen_training.models.builtin_models import resolve_model

    if args.format != "lora" and (args.rank is not None or args.energy is not None or args.dtype):
        raise SubjectgenError("--rank, --energy and --dtype apply to --format lora only.")
    found = check_subject_files(args.subject)  # damaged files are said before anything loads
    check_out(args, found[0].token if found else None)
    if args.base:
        args.base = resolve_model(args.base)
    if found and args.format == "diffusers" and found[0].has_deltas:
        base = args.base or resolve_model(found[0].base_model)  # builtin:<name> as recorded -> its folder
        if not Path(base).exists() and not is_repo_id(base):
            raise SubjectgenError(f"the subject records its base model as {base!r} (a local folder's name); pass "
                                  f"--base with that folder's path or the base's Hub id.")
        check_subject_fits_base(args.subject, base, *found)  # a subject of another base: said before the UNet loads
    subject = Subject.load(args.subject)
    if args.format == "lora":
        written = _export_lora(args, subject)
    elif args.format == "a1111":
        written = [export_a1111(subject, a1111_file(args.out, subject.config.token), token_only=args.token_only)]
    else:
        base_unet = None
        if subject.deltas or subject.bias_deltas:
            base = args.base or resolve_model(subject.config.base_model)
            base_unet = load_base_unet(base)
        written = export_diffusers(subject, args.out, base_unet=base_unet)
    for path in written:
        print(path)
    return 0
