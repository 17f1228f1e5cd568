"""``builtin:<name>`` model ids: tiny random models written on demand, so experiments, the demo and tests run offline.

* ``builtin:tiny-sd``: a tiny Stable Diffusion 1.x pipeline (:mod:`subjectgen_training.models.tiny_models`).
* ``builtin:tiny-sdxl``: a tiny SDXL pipeline, the alternative regularisation model's stand-in.
* ``builtin:tiny-sdxl-lora``: a random LoRA (peft, rank 4) for ``builtin:tiny-sdxl``, saved by diffusers' LoRA writer.
* ``builtin:tiny-clip``: a tiny random CLIP (real tokenizer) for the CLIP scores.
* ``builtin:toy-base``, ``builtin:toy-alt-lora``: the shipped toy-world model and its style LoRA
  (:mod:`subjectgen_training.toy.models`); their folders are returned as they are.
* ``builtin:toy-xl-base``, ``builtin:toy-xl-alt-lora``: the shipped toy SDXL (SDXL's architecture trained on the same
  world) and its style LoRA.

``hf://owner/repo/path/file.safetensors`` names one file of a Hub repository (e.g. a LoRA in a repository that holds
several) and resolves to its downloaded local path. Anything else (a folder, a Hub id) is returned unchanged. A model is written once into ``cache_dir`` through a
temporary folder that is renamed when complete, so concurrent or interrupted runs never see half a model.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from subjectgen_diffusers.atomic_io import make_staging_dir
from subjectgen_diffusers.errors import SubjectgenError

PREFIX = "builtin:"
HUB_FILE_PREFIX = "hf://"


class BuiltinModelError(SubjectgenError):
    """An unknown ``builtin:`` id; the message lists the known ones."""


def _tiny_sd(folder: Path) -> None:
    from subjectgen_training.models.tiny_models import save_tiny_sd

    save_tiny_sd(folder)


def _tiny_sdxl(folder: Path) -> None:
    from subjectgen_training.models.tiny_models import save_tiny_sdxl

    save_tiny_sdxl(folder)


def _tiny_sdxl_lora(folder: Path) -> None:
    import torch
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from subjectgen_training.models.tiny_models import build_tiny_sdxl_pipeline

    unet = build_tiny_sdxl_pipeline(seed=0).unet
    torch.manual_seed(1)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionXLPipeline.save_lora_weights(str(folder), unet_lora_layers=layers)


def _tiny_clip(folder: Path) -> None:
    import torch
    from transformers import CLIPConfig, CLIPModel

    from subjectgen_diffusers.tokenizer import build_clip_tokenizer

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406,
                         eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    build_clip_tokenizer().save_pretrained(folder)


# What `subjectgen models` says of each built-in name (the shipped ones first).
DESCRIPTIONS: dict[str, str] = {
    "toy-base": "the shipped toy-world model (Stable Diffusion architecture, 32 px cartoon faces, 15 MB): learns a "
                "face on a CPU; `subjectgen train` uses the toy recipe on it",
    "toy-alt-lora": "a style LoRA for builtin:toy-base (the toy stand-in for an alternative regularisation model)",
    "toy-xl-base": "the shipped toy SDXL (SDXL architecture: two text encoders, text/time conditioning; the same world, "
                   "14 MB): learns a face on a CPU; `subjectgen train` uses the toy recipe on it",
    "toy-xl-alt-lora": "a style LoRA for builtin:toy-xl-base (its alternative regularisation model's stand-in)",
    "tiny-sd": "a tiny random-weight Stable Diffusion 1.x pipeline (every step runs; the pictures are noise)",
    "tiny-sdxl": "a tiny random-weight SDXL pipeline",
    "tiny-sdxl-lora": "a random LoRA for builtin:tiny-sdxl",
    "tiny-clip": "a tiny random-weight CLIP model (for --clip-model)",
}
# Built-in bases on which `subjectgen train` defaults to the toy world's recipe instead of SD 1.5's.
TOY_BASES = ("toy-base", "toy-xl-base")

BUILDERS: dict[str, Callable[[Path], None]] = {
    "tiny-sd": _tiny_sd,
    "tiny-sdxl": _tiny_sdxl,
    "tiny-sdxl-lora": _tiny_sdxl_lora,
    "tiny-clip": _tiny_clip,
}


def _hub_file(model_id: str) -> str:
    from huggingface_hub import hf_hub_download

    parts = model_id[len(HUB_FILE_PREFIX):].split("/")
    if len(parts) < 3:
        raise BuiltinModelError(f"{model_id!r}: write hf://owner/repo/path/to/file.safetensors.")
    return hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]))


def default_cache_dir() -> Path:
    return Path(os.environ.get("SUBJECTGEN_CACHE", Path.home() / ".cache" / "subjectgen")) / "builtin"


def is_builtin(model_id: str | None) -> bool:
    return bool(model_id) and str(model_id).startswith(PREFIX)


def builtin_names() -> list[str]:
    """Every ``builtin:`` id, the shipped models first."""
    from subjectgen_training.toy.models import SHIPPED

    return [PREFIX + name for name in (*SHIPPED, *(n for n in BUILDERS if n not in SHIPPED))]


def builtin_name(model_id: str | None) -> str | None:
    """``toy-base`` for ``builtin:toy-base`` and for the bare shipped name ``toy-base`` (what subjects trained before
    built-in names were recorded hold) when no local folder has that name; else None."""
    if not model_id:
        return None
    text = str(model_id)
    if text.startswith(PREFIX):
        return text[len(PREFIX):]
    from subjectgen_training.toy.models import SHIPPED

    return text if text in SHIPPED and not Path(text).exists() else None


def is_toy_base(model_id: str | None) -> bool:
    """A built-in toy-world base (``builtin:toy-base``), on which training defaults to the toy recipe."""
    return builtin_name(model_id) in TOY_BASES


def resolve_model(model_id: str | None, cache_dir: str | Path | None = None) -> str | None:
    """The one place a model name becomes something ``from_pretrained`` reads: a local folder for a ``builtin:`` id
    (written on first use; a bare shipped name such as ``toy-base`` too, when no local folder has that name), a local
    file for ``hf://``; anything else (a folder, a Hub id) is returned unchanged."""
    if model_id and str(model_id).startswith(HUB_FILE_PREFIX):
        return _hub_file(str(model_id))
    name = builtin_name(model_id)
    if name is None:
        return model_id
    model_id = PREFIX + name
    from subjectgen_training.toy.models import SHIPPED, model_path

    if name in SHIPPED:
        return model_path(name)
    if name not in BUILDERS:
        raise BuiltinModelError(f"unknown built-in model {model_id!r}: known ones are {', '.join(builtin_names())} "
                                "(`subjectgen models` lists them).")
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache_dir / name
    if target.is_dir():
        return str(target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = make_staging_dir(cache_dir, f".{name}.")
    try:
        BUILDERS[name](staging)
        try:
            os.rename(staging, target)
        except OSError:  # another process finished first: keep its copy
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)
