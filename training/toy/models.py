"""The shipped toy models: ``weights/toy-base`` (a diffusers StableDiffusionPipeline folder) and ``weights/toy-alt-lora``
(a LoRA on it); ``weights/toy-xl-base`` (a StableDiffusionXLPipeline folder, the toy SDXL) and ``weights/toy-xl-alt-lora``
(its LoRA). Experiment configs name them ``builtin:toy-base`` etc. (:mod:`subjectgen_training.models.builtin_models`); scripts
use :func:`model_path`."""

from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent / "weights"
SHIPPED = ("toy-base", "toy-alt-lora", "toy-xl-base", "toy-xl-alt-lora")


def model_path(name: str) -> str:
    """A shipped toy model or LoRA (``toy-base``, ``toy-alt-lora``) or any diffusers folder / Hub id as given."""
    shipped = WEIGHTS / name
    shipped_files = (shipped / "model_index.json").is_file() or (shipped / "pytorch_lora_weights.safetensors").is_file()
    return str(shipped) if shipped_files else name


def has_weights(name: str = "toy-base") -> bool:
    return (WEIGHTS / name / "model_index.json").is_file()
