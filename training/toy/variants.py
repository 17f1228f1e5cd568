"""The toy models ``train_base`` can build: the SD toy (``toy-base``) and the toy SDXL (``toy-xl-base``).

A variant says which UNet and text encoders to create (in that order, from the seeded global RNG), how to wrap them
in their diffusers pipeline and write it, which model family reads them (``subjectgen_diffusers.families``: the
family's ``unet_conditioning`` is what the training loop conditions the UNet with, so the loop is the same for both)
and the names of the shipped weights. The world, captions, VAE, schedule and stages are shared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ToyVariant:
    name: str  # train_base --model
    family: str  # the subjectgen model family that reads the written pipeline
    weights: str  # training/toy/weights/<weights>: the base model
    lora_weights: str  # training/toy/weights/<lora_weights>: its second-style LoRA
    make_unet: Callable
    make_text_encoders: Callable[[], dict]  # {pipeline attribute: encoder}, in the family's text_encoders order
    assemble: Callable  # (vae, encoders, unet) -> pipeline
    save: Callable  # (pipeline, folder) -> folder

    def model_family(self):
        from subjectgen_diffusers.families import get_family

        return get_family(self.family)


def _sd_text_encoders() -> dict:
    from .architecture import toy_text_encoder

    return {"text_encoder": toy_text_encoder()}


def _sd_unet():
    from .architecture import toy_unet

    return toy_unet()


def _sd_assemble(vae, encoders: dict, unet):
    from .architecture import assemble_pipeline

    return assemble_pipeline(vae, encoders["text_encoder"], unet)


def _save(pipe, folder) -> Path:
    from .architecture import save_pipeline

    return save_pipeline(pipe, folder)


def _xl_text_encoders() -> dict:
    from .architecture_xl import toy_xl_text_encoders

    return toy_xl_text_encoders()


def _xl_unet():
    from .architecture_xl import toy_xl_unet

    return toy_xl_unet()


def _xl_assemble(vae, encoders: dict, unet):
    from .architecture_xl import assemble_xl_pipeline

    return assemble_xl_pipeline(vae, unet=unet, **encoders)


def _xl_save(pipe, folder) -> Path:
    from .architecture_xl import save_slim_tokenizer

    folder = _save(pipe, folder)
    for name in ("tokenizer", "tokenizer_2"):
        save_slim_tokenizer(getattr(pipe, name), Path(folder) / name)
    return folder


VARIANTS: dict[str, ToyVariant] = {
    "sd": ToyVariant("sd", "sd1", "toy-base", "toy-alt-lora", _sd_unet, _sd_text_encoders, _sd_assemble, _save),
    "sdxl": ToyVariant("sdxl", "sdxl", "toy-xl-base", "toy-xl-alt-lora", _xl_unet, _xl_text_encoders, _xl_assemble,
                       _xl_save),
}


def get_variant(name: str) -> ToyVariant:
    return VARIANTS[name]
