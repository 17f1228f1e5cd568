"""Sample a trained subject over prompt sets: one pipeline built once, batched, seeded, resumable.

The pipeline is the plug-in's :class:`~subjectgen_diffusers.SubjectPipeline` with the subject loaded. Each prompt's
``{}`` is filled here with ``subject_phrase`` around the subject's token (``"{} person"``
-> ``"<new1> person"``, the phrasing both Custom Diffusion and Cross Initialization train with), or with
``class_phrase`` (default ``a person``) when no subject is loaded (the base model's baseline). Image ``k`` of every prompt uses seed
``seed + k``, so setups and prompts are compared on the same initial noise. ``manifest.jsonl`` lists each image
(file, prompt, prompt_template, seed, subject, settings); its settings record the resolution used (the model's
native size when none was asked) and ``subject_text``, what every ``{}`` became. Images already listed are skipped
when the job is rerun.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from subjectgen_diffusers.atomic_io import atomic_save_image, atomic_write_text
from subjectgen_diffusers.errors import SubjectgenError
from subjectgen_diffusers.strict_config import check_known_keys
from subjectgen_training.config_flags import option
from subjectgen_training.prompts import DEFAULT_SUBJECT_PHRASE, fill_subject, load_prompts
from subjectgen_training.data.resolution import check_resolution

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}


class GenerateError(SubjectgenError):
    """Generation settings are wrong; the message says what to change."""


@dataclass
class GenerateConfig:
    """What ``subjectgen generate`` does (its flags come from these fields) and the ``generate`` section of an
    experiment file (the fields marked ``experiment=False`` are the runner's)."""

    base: str = option(help="the base model: diffusers folder, Hub id or builtin:NAME (`subjectgen models`)",
                       default_text="default: the base the --subject records", experiment=False)
    prompts: str = option(required=True, help="prompt file, shipped set (actions_places, expressions, art_styles, "
                          "accessories, experiment) or prompt text; {} marks the subject, | separates prompts")
    out: str = option(required=True, help="output folder (images + manifest.jsonl); reruns resume", experiment=False)
    subject: str | None = option(None, help="subject folder or Hub repo (omit to sample the base model)",
                                 default_text="default: none", experiment=False)
    num_per_prompt: int = option(4, help="images per prompt (seeds S, S+1, ...)")
    seed: int = option(0, help="seed of the first image of each prompt")
    steps: int = option(50, help="denoising steps")
    guidance: float = option(7.5, help="classifier-free guidance scale")
    scheduler: str | None = option(None, choices=lambda: sorted(SCHEDULERS), help="sampling scheduler",
                                   default_text="default: the model's own")
    resolution: int | None = option(None, help="image side in pixels, a positive multiple of 8",
                                    default_text="default: the model's native size")
    batch_size: int = option(4, help="images per model call")
    scale: float = option(1.0, help="strength of the subject's weight deltas")
    lora: str | None = option(None, help="a style LoRA (file, folder or Hub id) loaded beside the subject",
                              default_text="default: none")
    lora_scale: float = option(1.0, help="strength of --lora")
    subject_phrase: str = option("{} person", help="what {} in a prompt becomes with --subject; {} here is the "
                                 "subject's token (e.g. '<s1> person'; without --subject {} becomes 'a person'); the "
                                 "manifest records the text used as settings.subject_text",
                                 default_text="default: '{} person'")
    class_phrase: str = option(DEFAULT_SUBJECT_PHRASE, cli=False,
                               help="what {} becomes when no subject is loaded (the baseline)")
    negative_prompt: str | None = option(None, help="what the images should not show", default_text="default: none")
    dtype: str = option("auto", choices=("auto", "float32", "float16", "bfloat16"),
                        help="model dtype", default_text="default: auto = float16 on a CUDA GPU, float32 on the CPU")
    device: str | None = option(None, cli=False, help="torch device (default: cuda when available)")
    also_load: list[str] = option(default_factory=list, cli=False,
                                  experiment=False, help="further subjects loaded beside `subject` (their deltas add)")
    token: str | None = option(None, cli=False, experiment=False,
                               help="which loaded token fills {} (a subject holding several people); default: the first")

    def __post_init__(self) -> None:
        for name in ("num_per_prompt", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise GenerateError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise GenerateError(f"unknown scheduler {self.scheduler!r}: choose one of {sorted(SCHEDULERS)}.")
        if self.resolution is not None:
            check_resolution(self.resolution, GenerateError)
        if "{}" not in self.subject_phrase:
            raise GenerateError(f"subject_phrase must contain {{}} for the token, got {self.subject_phrase!r}.")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise GenerateError(f"dtype must be auto, float32, float16 or bfloat16, got {self.dtype!r}.")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerateConfig:
        check_known_keys(cls, data, GenerateError, "generation config")
        return cls(**data)

    def settings(self) -> dict[str, Any]:
        """What the manifest records about how every image was made."""
        keys = ("base", "steps", "guidance", "scheduler", "resolution", "scale", "lora", "lora_scale",
                "negative_prompt", "subject_phrase", "class_phrase", "also_load", "token")
        return {key: getattr(self, key) for key in keys}


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower().replace("{}", "subject")).strip("-")[:limit].strip("-")


def plan_images(prompts: list[str], num_per_prompt: int, seed: int) -> list[dict[str, Any]]:
    """One entry (file, prompt_template, seed) per image; file names are stable so reruns find finished images."""
    return [
        {"file": f"{p:03d}-{_slug(template)}-{k:02d}.png", "prompt_template": template, "seed": seed + k}
        for p, template in enumerate(prompts)
        for k in range(num_per_prompt)
    ]


def read_manifest(folder: Path) -> list[dict[str, Any]]:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_pipeline(config: GenerateConfig):
    """A :class:`SubjectPipeline` with the subject loaded (safety checker off), scheduler swapped if asked."""
    import diffusers
    import torch

    from subjectgen_diffusers import SubjectPipeline

    from subjectgen_diffusers.hub import resolve_source
    from subjectgen_diffusers.subject_check import check_subject
    from subjectgen_training.models.builtin_models import resolve_model

    base = resolve_model(config.base)  # builtin:<name> -> its folder

    # A wrong subject path fails here, before the (large) base model is loaded.
    subject = str(resolve_source(config.subject)) if config.subject else None
    others = [str(resolve_source(other)) for other in config.also_load]
    if others and not subject:
        raise GenerateError("also_load loads subjects beside `subject`: give the subject too.")
    for source in [subject, *others] if subject else []:  # damaged files or another base: said before the model loads
        check_subject(source, base)
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = config.dtype if config.dtype != "auto" else ("float16" if device.startswith("cuda") else "float32")
    try:
        pipe = SubjectPipeline.from_pretrained(
            base, subject=[subject, *others] if subject else None, subject_scale=config.scale,
            dtype=getattr(torch, dtype_name),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    except SubjectgenError:
        raise
    except (OSError, ValueError) as error:
        raise GenerateError(f"cannot load the base model {config.base!r} ({error}): pass a diffusers folder or "
                            "Hub id of a Stable Diffusion 1.x model (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5).") from error
    if config.lora:
        from subjectgen_training.models.style_lora import load_style_lora

        load_style_lora(pipe, resolve_model(config.lora), config.lora_scale, model=config.base, error=GenerateError)
    if config.scheduler:
        scheduler_class = getattr(diffusers, SCHEDULERS[config.scheduler])
        pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def prompt_token(pipe, config: GenerateConfig) -> str:
    """The token that fills ``{}``: ``config.token`` (any loaded subject's token), else the first subject's (the
    pipeline expands a multi-vector token itself)."""
    from subjectgen_diffusers import loaded_subjects

    token = config.token or pipe.subject_tokens[0]
    loaded = [t for entry in loaded_subjects(pipe).values() for t in entry.tokens]
    if token not in loaded:
        raise GenerateError(f"token {token!r} is not a loaded subject's token; loaded: {loaded}.")
    return token


def generate_images(config: GenerateConfig, pipe=None) -> Path:
    """Generate ``num_per_prompt`` images per prompt into ``config.out``; return the folder.

    ``pipe``: a pipeline already built for ``config.base`` with ``config.subject`` loaded (or no subject when
    ``config.subject`` is None), e.g. the one a long-running app keeps; by default one is built from ``config``."""
    import torch
    from tqdm.auto import tqdm

    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise GenerateError(f"--out {out} is an existing file; give a folder for the images (a new one, or the "
                            "folder of an earlier run to finish it).")
    prompts = load_prompts(config.prompts)
    planned = plan_images(prompts, config.num_per_prompt, config.seed)
    done = {entry["file"]: entry for entry in read_manifest(out) if (out / entry["file"]).is_file()}
    todo = [entry for entry in planned if entry["file"] not in done]
    if not todo:
        logger.info("%s: all %d images exist; nothing to generate", out, len(planned))
        return out

    pipe = pipe if pipe is not None else load_pipeline(config)
    fill = config.subject_phrase.replace("{}", prompt_token(pipe, config)) if config.subject else config.class_phrase
    size = config.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    # What was actually used: the native size when none was asked, and the text that every {} became.
    settings = {**config.settings(), "resolution": size, "subject_text": fill}
    finished = dict(done)
    progress = tqdm(total=len(todo), desc="generate", unit="img")
    for start in range(0, len(todo), config.batch_size):
        batch = todo[start : start + config.batch_size]
        texts = [fill_subject(entry["prompt_template"], fill) for entry in batch]
        generators = [torch.Generator(device="cpu").manual_seed(entry["seed"]) for entry in batch]
        images = pipe(
            prompt=texts,
            negative_prompt=[config.negative_prompt] * len(batch) if config.negative_prompt else None,
            num_inference_steps=config.steps,
            guidance_scale=config.guidance,
            height=size,
            width=size,
            generator=generators,
        ).images
        for entry, text, image in zip(batch, texts, images):
            atomic_save_image(out / entry["file"], image)
            finished[entry["file"]] = {**entry, "prompt": text, "subject": config.subject, "settings": settings}
        ordered = [finished[e["file"]] for e in planned if e["file"] in finished]
        atomic_write_text(out / MANIFEST_NAME, "".join(json.dumps(e) + "\n" for e in ordered))
        progress.update(len(batch))
    progress.close()
    return out
