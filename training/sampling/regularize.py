"""Regularisation ("prior preservation") images from any diffusers text-to-image model, optionally with a LoRA.

DreamBooth's class-specific prior-preservation loss (Ruiz et al., CVPR 2023, Eq. 2) and Custom Diffusion's
regularisation set (Kumari et al., CVPR 2023, Sec. 3.2) train on images of the subject's class ("a photo of a
person") next to the subject photos, so the fine-tuned weights keep what the class looks like. This module makes that
set with the base model or an alternative one (an SDXL finetune with a LoRA, as in the seed experiment).

Each image ``i`` is drawn from its own generator seeded by :func:`image_seed` (``--seed``, ``i``), so the set is
reproducible image by image, independent of batching, resumption or the number of processes. Images are written
atomically, so a killed job leaves only whole files; running it again makes only the missing ones, and a larger
``num`` extends the set. ``manifest.jsonl`` is rewritten atomically from the files on disk. Work is split across
processes with accelerate's ``PartialState.split_between_processes`` (``accelerate launch -m subjectgen_training regularize``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from subjectgen_diffusers.atomic_io import atomic_save_image, atomic_write_json, atomic_write_text
from subjectgen_diffusers.errors import SubjectgenError
from subjectgen_diffusers.strict_config import check_known_keys
from subjectgen_training.config_flags import option
from subjectgen_training.data.resolution import resolution_problem
from subjectgen_training.models.style_lora import load_style_lora

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"
SETTINGS_NAME = "regularize.json"
IMAGE_NAME = re.compile(r"^(\d{5,})\.png$")
DTYPES = ("auto", "fp32", "fp16", "bf16")
# Fields that decide what an image looks like: a resumed or extended job must use the same values.
GENERATION_FIELDS = ("model", "lora", "lora_scale", "prompt", "negative_prompt", "seed", "steps", "guidance",
                     "resolution")


class RegularizeError(SubjectgenError):
    """The regularisation job cannot run as asked; the message says what to change."""


@dataclass(kw_only=True)
class RegularizeConfig:
    """One regularisation set. Defaults follow Custom Diffusion's generated set (50 steps, guidance 6)."""

    model: str = option(required=True, help="diffusers text-to-image model: folder, Hub id (SD 1.x/2.x, SDXL) or "
                        "builtin:NAME (`subjectgen models`)")
    prompt: str = option(required=True, metavar="TEXT", help='e.g. "a photo of a person"')
    num: int = option(required=True, metavar="N", help="images in the set (a larger N later extends it)")
    out: Path = option(required=True, metavar="DIR", help="output folder (images + manifest.jsonl)", experiment=False)
    lora: str | None = option(None, metavar="PATH_OR_ID", help="LoRA file, folder, Hub id or builtin:NAME for --model",
                              default_text="default: none")
    lora_scale: float = option(1.0, metavar="S", help="LoRA strength")
    negative_prompt: str | None = option(None, metavar="TEXT", help="what the images should not show",
                                         default_text="default: none")
    seed: int = option(0, metavar="S", help="image i uses a seed derived from S and i")
    steps: int = option(50, metavar="K", help="denoising steps")
    guidance: float = option(6.0, metavar="G", help="classifier-free guidance")
    resolution: int | None = option(None, metavar="R", help="square image size",
                                    default_text="default: the model's native size, 512 for SD 1.5, 1024 for SDXL")
    batch_size: int = option(4, metavar="B", help="images per model call")
    dtype: str = option("auto", choices=DTYPES, help="weights dtype",
                        default_text="default: auto = fp16 on CUDA, fp32 on CPU")

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        problems = []
        if not str(self.model).strip():
            problems.append("--model must name a diffusers folder or Hub id")
        if not self.prompt.strip():
            problems.append('--prompt must not be empty (e.g. "a photo of a person")')
        if self.num < 1:
            problems.append(f"--num must be at least 1, got {self.num}")
        if self.steps < 1:
            problems.append(f"--steps must be at least 1, got {self.steps}")
        if self.batch_size < 1:
            problems.append(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.seed < 0:
            problems.append(f"--seed must be >= 0, got {self.seed}")
        if self.resolution is not None and resolution_problem(self.resolution):
            problems.append(resolution_problem(self.resolution))
        if self.dtype not in DTYPES:
            problems.append(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if problems:
            raise RegularizeError("; ".join(problems) + ".")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RegularizeConfig":
        check_known_keys(cls, data, RegularizeError, "regularisation config")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["out"] = str(self.out)
        return data


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` in a set made with ``seed`` (63 bits; sets with different seeds do not overlap)."""
    digest = hashlib.sha256(f"subjectgen-regularize:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def image_name(index: int) -> str:
    return f"{index:05d}.png"


def is_whole_image(path: Path) -> bool:
    """True when ``path`` decodes completely (a truncated or foreign file is not whole)."""
    from PIL import Image

    try:
        with Image.open(path) as handle:
            handle.load()
        return True
    except Exception:  # noqa: BLE001 - any decoding failure means "not whole"
        return False


def indices_on_disk(out: Path) -> list[int]:
    """Indices of the image files under their final names (atomic writes make each one whole)."""
    if not out.is_dir():
        return []
    return sorted(int(m.group(1)) for p in out.iterdir() if (m := IMAGE_NAME.match(p.name)))


def manifest_entry(config: RegularizeConfig, index: int) -> dict[str, Any]:
    return {
        "file": image_name(index),
        "prompt": config.prompt,
        "negative_prompt": config.negative_prompt,
        "seed": image_seed(config.seed, index),
        "model": config.model,
        "lora": config.lora,
        "lora_scale": config.lora_scale if config.lora else None,
        "steps": config.steps,
        "guidance": config.guidance,
        "resolution": config.resolution,
    }


def write_manifest(config: RegularizeConfig) -> Path:
    """Rewrite ``manifest.jsonl`` atomically: one line per image file on disk, in index order."""
    lines = [json.dumps(manifest_entry(config, i)) for i in indices_on_disk(config.out)]
    return atomic_write_text(config.out / MANIFEST_NAME, "".join(line + "\n" for line in lines))


def previous_settings(out: Path) -> dict[str, Any] | None:
    """The settings a folder was made with (``regularize.json``), or None for a new folder."""
    path = out / SETTINGS_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RegularizeError(f"{path} is not valid JSON ({error}); delete it or choose a new --out.") from error


def check_same_settings(config: RegularizeConfig) -> None:
    """Refuse to resume or extend a folder made with other generation settings (it would mix two sets).

    A resolution left to the model's default matches the resolution the folder was made at.
    """
    previous = previous_settings(config.out)
    if previous is None:
        return
    current = config.to_dict()
    keys = [k for k in GENERATION_FIELDS if not (k == "resolution" and current[k] is None)]
    changed = [f"{key}: {previous.get(key)!r} -> {current[key]!r}" for key in keys if previous.get(key) != current[key]]
    if changed:
        raise RegularizeError(
            f"--out {config.out} holds images made with other settings ({'; '.join(changed)}). "
            "Run with the same settings to resume or extend it, or choose a new --out."
        )


def write_settings(config: RegularizeConfig) -> Path:
    return atomic_write_json(config.out / SETTINGS_NAME, {k: v for k, v in config.to_dict().items() if k != "num"})


def prepare_folder(config: RegularizeConfig) -> list[int]:
    """Check the settings, clean stale temp files, drop image files that do not decode; return the indices to make."""
    config.out.mkdir(parents=True, exist_ok=True)
    check_same_settings(config)
    for stale in config.out.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    for index in indices_on_disk(config.out):
        path = config.out / image_name(index)
        if not is_whole_image(path):
            logger.warning("%s does not decode; it will be made again", path)
            path.unlink()
    existing = set(indices_on_disk(config.out))
    return [i for i in range(config.num) if i not in existing]


def resolve_dtype(name: str, device):
    import torch

    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def load_text_to_image(config: RegularizeConfig, device):
    """The model through diffusers' auto pipeline (SD 1.x/2.x, SDXL and finetunes), with the LoRA applied."""
    from diffusers import AutoPipelineForText2Image

    from subjectgen_training.models.builtin_models import resolve_model

    dtype = resolve_dtype(config.dtype, device)
    try:
        pipe = AutoPipelineForText2Image.from_pretrained(resolve_model(config.model), dtype=dtype)
    except (OSError, ValueError) as error:
        raise RegularizeError(
            f"could not load --model {config.model}: {error}. Pass a diffusers model folder or Hub id "
            "(e.g. stable-diffusion-v1-5/stable-diffusion-v1-5 or RunDiffusion/Juggernaut-XL-v9)."
        ) from error
    if getattr(pipe, "safety_checker", None) is not None:
        # A false positive turns a "person" image black, which would teach the model black images.
        pipe.safety_checker = None
    if config.lora:
        load_style_lora(pipe, resolve_model(config.lora), config.lora_scale, model=config.model, error=RegularizeError,
                        adapter_name="regularize")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def native_resolution(pipe) -> int:
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def generate_batch(pipe, config: RegularizeConfig, indices: list[int], device) -> list:
    import torch

    generators = [torch.Generator(device="cpu").manual_seed(image_seed(config.seed, i)) for i in indices]
    kwargs = {}
    if config.negative_prompt:
        kwargs["negative_prompt"] = [config.negative_prompt] * len(indices)
    return pipe(
        prompt=[config.prompt] * len(indices),
        num_inference_steps=config.steps,
        guidance_scale=config.guidance,
        height=config.resolution,
        width=config.resolution,
        generator=generators,
        **kwargs,
    ).images


def has_accelerator() -> bool:
    """Whether torch sees a GPU-like device; without one, accelerate must be told to split over CPU processes."""
    import torch

    if hasattr(torch, "accelerator"):
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


def check_model_is_there(config: RegularizeConfig) -> None:
    """A model that is neither a diffusers folder nor a Hub id reachable (or cached) is named from its
    ``model_index.json`` alone, before torch and diffusers load: a typo costs a second, not a library import."""
    from subjectgen_diffusers.base_configs import read_model_index
    from subjectgen_training.models.builtin_models import resolve_model

    try:
        read_model_index(resolve_model(config.model))
    except SubjectgenError as error:
        raise RegularizeError(
            f"could not load --model {config.model}: {error} (Hub ids look like stable-diffusion-v1-5/"
            "stable-diffusion-v1-5 or RunDiffusion/Juggernaut-XL-v9.)") from error


def generate_regularization(config: RegularizeConfig) -> Path:
    """Make the missing images of the set in ``config.out`` and return the folder (images + manifest.jsonl)."""
    if set(range(config.num)) - set(indices_on_disk(config.out)):  # a finished set reruns without the model
        check_model_is_there(config)
    from accelerate import PartialState
    from tqdm.auto import tqdm

    state = PartialState(cpu=not has_accelerator())
    check_same_settings(config)  # in every process, so a refusal never leaves the others waiting at the barrier
    if state.is_main_process:
        prepare_folder(config)
    state.wait_for_everyone()
    existing = set(indices_on_disk(config.out))
    todo = [i for i in range(config.num) if i not in existing]
    if not todo:
        if state.is_main_process:
            previous = previous_settings(config.out) or {}
            write_manifest(dataclasses.replace(config, resolution=config.resolution or previous.get("resolution")))
            logger.info("%s already holds all %d images", config.out, config.num)
        return config.out

    pipe = load_text_to_image(config, state.device)
    config = dataclasses.replace(config, resolution=config.resolution or native_resolution(pipe))
    if state.is_main_process:
        write_settings(config)
        write_manifest(config)
    with state.split_between_processes(todo) as mine:
        bar = tqdm(total=len(todo), desc="regularisation images", unit="img", disable=not state.is_main_process)
        for start in range(0, len(mine), config.batch_size):
            batch = mine[start:start + config.batch_size]
            for index, image in zip(batch, generate_batch(pipe, config, batch, state.device)):
                atomic_save_image(config.out / image_name(index), image)
            if state.is_main_process:
                write_manifest(config)
                bar.update(len(set(todo).intersection(indices_on_disk(config.out))) - bar.n)
        bar.close()
    state.wait_for_everyone()
    if state.is_main_process:
        write_manifest(config)
    return config.out
