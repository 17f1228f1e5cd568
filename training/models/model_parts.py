"""Loading the parts of a base model a trainer needs, from a local diffusers folder or a Hub id.

Which text encoders and tokenizers a base has (one for Stable Diffusion 1.x/2.x, two for SDXL) is its model family's
word (``subjectgen_diffusers.families``, recognised from ``model_index.json`` and ``unet/config.json`` without loading
weights); their classes are the ones ``model_index.json`` names, as diffusers' own loader reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from subjectgen_diffusers.errors import SubjectgenError


class BaseModelError(SubjectgenError):
    """The base model cannot be loaded."""


@dataclass
class ModelParts:
    """The frozen modules of one base model. ``tokenizers`` / ``text_encoders`` are keyed by the pipeline attribute
    names of the family's text-encoder slots and readable as attributes (``parts.text_encoder``,
    ``parts.text_encoder_2``), so the parts serve as the ``components`` a family's methods read."""

    family: object  # subjectgen_diffusers.families.ModelFamily
    tokenizers: dict[str, object]
    text_encoders: dict[str, object]
    vae: object
    unet: object
    noise_scheduler: object  # DDPM with the model's training schedule (adds noise)
    sample_scheduler: object  # the model's own scheduler (validation images)

    def __getattr__(self, name: str):
        for table in ("tokenizers", "text_encoders"):
            found = self.__dict__.get(table, {})
            if name in found:
                return found[name]
        raise AttributeError(name)

    def slots(self) -> list[tuple[object, object, object]]:
        """``(slot, tokenizer, text_encoder)`` per text encoder, in the family's order."""
        return [(slot, self.tokenizers[slot.tokenizer], self.text_encoders[slot.encoder])
                for slot in self.family.text_encoders]


def _model_index(base: str, revision: str | None) -> dict:
    from subjectgen_diffusers.base_configs import read_model_index

    return read_model_index(base, revision)


def _check_local_folder(base: str) -> None:
    local = Path(base)
    if not local.exists():
        return
    missing = [name for name in ("model_index.json", "vae", "unet", "scheduler") if not (local / name).exists()]
    if missing:
        raise BaseModelError(
            f"--base {base} is not a diffusers Stable Diffusion folder (missing {', '.join(missing)}); pass the "
            "folder written by `save_pretrained` or a Hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5."
        )


def _transformers_class(index: dict, name: str, base: str):
    import transformers

    entry = index.get(name) or [None, None]
    cls = getattr(transformers, str(entry[1]), None) if entry[0] == "transformers" else None
    if cls is None:
        raise BaseModelError(f"--base {base}: model_index.json names {entry!r} for `{name}`, not a transformers "
                             "class; pass a diffusers Stable Diffusion folder or Hub id.")
    return cls


def load_tokenizers(base: str, revision: str | None = None) -> tuple[object, dict[str, object]]:
    """``(family, {tokenizer attribute: tokenizer})``, cheap: lets the token be checked before any model is loaded."""
    from subjectgen_diffusers.families import family_of_base

    from subjectgen_training.models.builtin_models import resolve_model

    base = resolve_model(base)  # builtin:<name> -> its folder
    _check_local_folder(base)
    try:
        family = family_of_base(base, revision)
        index = _model_index(base, revision)
        tokenizers = {slot.tokenizer: _transformers_class(index, slot.tokenizer, base).from_pretrained(
            base, subfolder=slot.tokenizer, revision=revision) for slot in family.text_encoders}
    except (OSError, ValueError) as error:
        hint = "a local diffusers folder (with model_index.json, tokenizer/, text_encoder/, vae/, unet/, scheduler/) or a Hub id"
        if Path(base).exists():
            hint = f"{base} is not a diffusers folder: it needs tokenizer/, text_encoder/, vae/, unet/ and scheduler/"
        raise BaseModelError(f"cannot load the tokenizer of --base {base!r}: {hint}. ({error})") from error
    return family, tokenizers


def load_tokenizer(base: str, revision: str | None = None):
    """The first (for SD 1.x the only) tokenizer of ``base``."""
    family, tokenizers = load_tokenizers(base, revision)
    return tokenizers[family.text_encoders[0].tokenizer]


def load_model_parts(base: str, family, tokenizers: dict[str, object], revision: str | None = None) -> ModelParts:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.schedulers import KarrasDiffusionSchedulers  # noqa: F401 - registers scheduler classes

    from subjectgen_training.models.builtin_models import resolve_model

    base = resolve_model(base)  # builtin:<name> -> its folder
    try:
        index = _model_index(base, revision)
        text_encoders = {slot.encoder: _transformers_class(index, slot.encoder, base).from_pretrained(
            base, subfolder=slot.encoder, revision=revision) for slot in family.text_encoders}
        vae = AutoencoderKL.from_pretrained(base, subfolder="vae", revision=revision)
        unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", revision=revision)
        scheduler_config = DDPMScheduler.from_pretrained(base, subfolder="scheduler", revision=revision).config
    except (OSError, ValueError) as error:
        raise BaseModelError(f"cannot load --base {base!r}: {error}") from error
    return parts_from_modules(family, tokenizers, text_encoders, vae, unet, scheduler_config)


def parts_from_modules(family, tokenizers: dict[str, object], text_encoders: dict[str, object], vae, unet,
                       scheduler_config) -> ModelParts:
    """Freeze already-built modules and pair them with DDPM (training) and DDIM (sampling) schedulers."""
    from diffusers import DDIMScheduler, DDPMScheduler

    for module in (*text_encoders.values(), vae, unet):
        module.requires_grad_(False)
        module.eval()
    return ModelParts(family, dict(tokenizers), dict(text_encoders), vae, unet,
                      DDPMScheduler.from_config(scheduler_config), DDIMScheduler.from_config(scheduler_config))


def cast_frozen_weights(modules, dtype) -> None:
    """Frozen weights to the compute dtype under mixed precision; trainable tensors stay float32 (autocast mixes)."""
    import torch

    if dtype == torch.float32:
        return
    for module in modules:
        for param in module.parameters():
            if not param.requires_grad:
                param.data = param.data.to(dtype)
