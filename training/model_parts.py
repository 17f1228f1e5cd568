"""Loading the parts of a Stable Diffusion 1.x model a trainer needs, from a local diffusers folder or a Hub id."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from subjectgen_diffusers.errors import SubjectgenError


class BaseModelError(SubjectgenError):
    """The base model cannot be loaded."""


@dataclass
class ModelParts:
    tokenizer: object
    text_encoder: object
    vae: object
    unet: object
    noise_scheduler: object  # DDPM with the model's training schedule (adds noise)
    sample_scheduler: object  # the model's own scheduler (validation images)


def load_tokenizer(base: str, revision: str | None = None):
    """Only the tokenizer (cheap): lets the token be checked before any model is loaded."""
    from transformers import CLIPTokenizer

    from subjectgen_training.builtin_models import resolve_model

    base = resolve_model(base)  # builtin:<name> -> its folder
    local = Path(base)
    if local.exists():
        missing = [name for name in ("model_index.json", "tokenizer", "text_encoder", "vae", "unet", "scheduler")
                   if not (local / name).exists()]
        if missing:
            raise BaseModelError(
                f"--base {base} is not a diffusers Stable Diffusion folder (missing {', '.join(missing)}); pass the "
                "folder written by `save_pretrained` or a Hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5."
            )
    try:
        return CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", revision=revision)
    except (OSError, ValueError) as error:
        hint = "a local diffusers folder (with tokenizer/, text_encoder/, vae/, unet/, scheduler/) or a Hub id"
        if Path(base).exists():
            hint = f"{base} is not a diffusers folder: it needs tokenizer/, text_encoder/, vae/, unet/ and scheduler/"
        raise BaseModelError(f"cannot load the tokenizer of --base {base!r}: {hint}. ({error})") from error


def load_model_parts(base: str, tokenizer, revision: str | None = None) -> ModelParts:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.schedulers import KarrasDiffusionSchedulers  # noqa: F401 - registers scheduler classes
    from transformers import CLIPTextModel

    from subjectgen_training.builtin_models import resolve_model

    base = resolve_model(base)  # builtin:<name> -> its folder
    try:
        text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", revision=revision)
        vae = AutoencoderKL.from_pretrained(base, subfolder="vae", revision=revision)
        unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", revision=revision)
        scheduler_config = DDPMScheduler.from_pretrained(base, subfolder="scheduler", revision=revision).config
    except (OSError, ValueError) as error:
        raise BaseModelError(f"cannot load --base {base!r}: {error}") from error
    return parts_from_modules(tokenizer, text_encoder, vae, unet, scheduler_config)


def parts_from_modules(tokenizer, text_encoder, vae, unet, scheduler_config) -> ModelParts:
    """Freeze already-built modules and pair them with DDPM (training) and DDIM (sampling) schedulers."""
    from diffusers import DDIMScheduler, DDPMScheduler

    for module in (text_encoder, vae, unet):
        module.requires_grad_(False)
        module.eval()
    return ModelParts(tokenizer, text_encoder, vae, unet, DDPMScheduler.from_config(scheduler_config),
                      DDIMScheduler.from_config(scheduler_config))
