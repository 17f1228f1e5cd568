"""The typed configuration of one training run (``subjectgen train``), with each method's published defaults.

Defaults left as ``None`` are filled from the recipe of the chosen method by :meth:`TrainConfig.resolved`:

- Custom Diffusion (Kumari et al., "Multi-Concept Customization of Text-to-Image Diffusion", CVPR 2023), face
  recipe: lr 5e-6, 1500 steps, batch 2, scope ``kv+q+out``, modifier token initialised from "ktn", prompt
  "photo of a {} person", class prompt "person", prior loss weight 1.0, horizontal flip and random rescale.
- Cross Initialization (Pang et al., "Cross Initialization for Face Personalization of Text-to-Image Models",
  CVPR 2024): 2 vectors, lr 0.000625 x batch 8 = 0.005, 320 steps, batch 8, regulariser weight 1e-5, captions from
  templates around "face of {} person", flip 0.5.
- CD+CR: Cross-Initialised tokens (token lr 0.005) and Custom Diffusion deltas (lr 5e-6) trained together.

A YAML/TOML file holds the same fields; unknown keys are errors; command-line flags override the file.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from subjectgen_diffusers.errors import SubjectgenError
from subjectgen_diffusers.strict_config import check_known_keys

METHODS = ("cd", "cr", "cd+cr")
CD_SCOPES = ("kv", "kv+q+out")
MIXED_PRECISION = ("no", "fp16", "bf16")
CONFIG_FILE_NAME = "train_config.json"
DEFAULT_TOKEN = "<new1>"

# Per-method recipe defaults (see the module docstring for the sources).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "cd": dict(
        steps=1500, lr=5e-6, token_lr=5e-6, batch_size=2, cd_scope="kv+q+out", num_vectors=1, reg_weight=0.0,
        init_word="ktn", prompt="photo of a {} person", class_prompt="person", flip_p=0.5, random_rescale=True,
        caption_templates=False,
    ),
    "cr": dict(
        steps=320, lr=0.005, token_lr=0.005, batch_size=8, cd_scope=None, num_vectors=2, reg_weight=1e-5,
        init_word=None, prompt="face of {} person", class_prompt="person", flip_p=0.5, random_rescale=False,
        caption_templates=True,
    ),
    "cd+cr": dict(
        steps=1500, lr=5e-6, token_lr=0.005, batch_size=2, cd_scope="kv+q+out", num_vectors=2, reg_weight=1e-5,
        init_word=None, prompt="face of {} person", class_prompt="person", flip_p=0.5, random_rescale=True,
        caption_templates=True,
    ),
}


class TrainConfigError(SubjectgenError):
    """A training configuration value or file is wrong; the message names the field and what is allowed."""


@dataclass
class TrainConfig:
    """Everything one training run needs. ``None`` means "the method's published default"."""

    base: str  # local diffusers folder or Hub id of an SD 1.x model
    photos: str  # folder of 4-20 photos of the subject (optionally prepared: crops + face masks)
    method: str  # "cd" | "cr" | "cd+cr"
    out: str  # output folder: the subject files, train_config.json, checkpoints/
    token: str | None = None  # the new token string (default "<new1>"); must not be in the vocabulary
    reg_dir: str | None = None  # regularisation images (prior preservation); None disables it
    steps: int | None = None
    resolution: int = 512
    batch_size: int | None = None  # instance images per step (plus as many class images when reg_dir is set)
    lr: float | None = None  # lr of the Custom Diffusion deltas (cd, cd+cr) or of the token rows (cr)
    token_lr: float | None = None  # lr of the new token rows
    seed: int = 0
    prior_loss_weight: float = 1.0
    cd_scope: str | None = None  # "kv" | "kv+q+out" (Custom Diffusion methods only)
    num_vectors: int | None = None  # vectors of the new token
    reg_weight: float | None = None  # Cross Initialization's L2 pull towards the initial vectors
    celeb_names: str | None = None  # replaces the packaged celebrity-name list (Cross Initialization)
    init_word: str | None = None  # word whose embedding starts the token when not cross-initialised
    prompt: str | None = None  # instance prompt; "{}" becomes the token
    class_prompt: str | None = None  # prompt of the regularisation images without their own captions
    caption_templates: bool | None = None  # wrap the prompt in varied caption templates (Cross Initialization)
    flip_p: float | None = None
    random_rescale: bool | None = None  # Custom Diffusion's zoom in/out augmentation with its loss mask
    rescale_variants: int = 4  # pre-encoded random-rescale variants per photo and flip (latents cached once)
    mask_loss: bool = False  # weight the loss by the face mask of a prepared photo folder
    mask_background_weight: float = 0.2  # loss weight outside the face when mask_loss is on
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16" (through accelerate)
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = True  # used only when bitsandbytes imports and a GPU is present
    adam_weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    checkpoint_every: int = 0  # steps between resumable checkpoints; 0 = none
    checkpoints_total_limit: int = 2  # keep the last K checkpoints
    resume: bool = False  # continue from the latest checkpoint in out/checkpoints
    validation_every: int = 0  # steps between validation images; 0 = none
    validation_prompt: str | None = None  # default: the instance prompt
    log_with: str | None = None  # "tensorboard" to write logs under out/logs
    revision: str | None = None  # Hub revision of base
    save_dtype: str = "float32"  # dtype of the stored subject tensors

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise TrainConfigError(f"method must be one of {list(METHODS)}, got {self.method!r}.")
        for name in ("base", "photos", "out"):
            if not getattr(self, name):
                raise TrainConfigError(f"`{name}` is required.")
        if self.cd_scope is not None and self.cd_scope not in CD_SCOPES:
            raise TrainConfigError(f"cd_scope must be one of {list(CD_SCOPES)}, got {self.cd_scope!r}.")
        if self.mixed_precision not in MIXED_PRECISION:
            raise TrainConfigError(f"mixed_precision must be one of {list(MIXED_PRECISION)}, got {self.mixed_precision!r}.")
        if self.token is not None and (not self.token or any(c.isspace() for c in self.token)):
            raise TrainConfigError(f"token must be one word without spaces, got {self.token!r}.")
        positive = ("steps", "batch_size", "num_vectors", "resolution", "rescale_variants", "checkpoints_total_limit")
        for name in positive:
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise TrainConfigError(f"{name} must be >= 1, got {value}.")
        if self.resolution % 8:
            raise TrainConfigError(f"resolution must be a multiple of 8 (the VAE's factor), got {self.resolution}.")
        for name in ("lr", "token_lr"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise TrainConfigError(f"{name} must be > 0, got {value}.")
        for name in ("reg_weight", "prior_loss_weight", "checkpoint_every", "validation_every"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise TrainConfigError(f"{name} must be >= 0, got {value}.")
        if self.flip_p is not None and not 0.0 <= self.flip_p <= 1.0:
            raise TrainConfigError(f"flip_p must be in [0, 1], got {self.flip_p}.")
        if self.log_with not in (None, "tensorboard"):
            raise TrainConfigError(f"log_with must be null or 'tensorboard', got {self.log_with!r}.")
        if self.save_dtype not in ("float32", "float16", "bfloat16"):
            raise TrainConfigError(f"save_dtype must be float32, float16 or bfloat16, got {self.save_dtype!r}.")
        for name in ("prompt", "validation_prompt"):
            value = getattr(self, name)
            if value is not None and "{}" not in value:
                raise TrainConfigError(f"{name} must contain {{}} where the token goes, got {value!r}.")

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a mapping; unknown keys raise an error listing the allowed ones."""
        if not isinstance(data, dict):
            raise TrainConfigError(f"a training config must be a mapping of field: value, got {type(data).__name__}.")
        data = {key.replace("-", "_"): value for key, value in data.items()}
        check_known_keys(cls, data, TrainConfigError, "training config")
        missing = [name for name in ("base", "photos", "method", "out") if data.get(name) in (None, "")]
        if missing:
            raise TrainConfigError(f"missing required training config keys {missing} (give them in the file or as flags).")
        try:
            return cls(**data)
        except TypeError as error:
            raise TrainConfigError(f"bad training config: {error}") from error

    @classmethod
    def read_file(cls, path: str | Path) -> dict[str, Any]:
        """The raw mapping of a YAML (.yaml/.yml), TOML (.toml) or JSON file; not yet validated."""
        path = Path(path)
        if not path.is_file():
            raise TrainConfigError(f"config file {path} does not exist.")
        text = path.read_text(encoding="utf-8")
        suffix = path.suffix.lower()
        try:
            if suffix == ".toml":
                import tomllib

                data = tomllib.loads(text)
            elif suffix == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text) or {}
        except Exception as error:  # noqa: BLE001 - any parse error is the user's file
            raise TrainConfigError(f"cannot parse config file {path}: {error}") from error
        if not isinstance(data, dict):
            raise TrainConfigError(f"config file {path} must hold a mapping of field: value.")
        return data

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a config file; keyword ``overrides`` (flags) that are not None replace its values."""
        data = cls.read_file(path)
        data.update({key: value for key, value in overrides.items() if value is not None})
        return cls.from_dict(data)

    # -- defaults ----------------------------------------------------------------------------------------------
    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` recipe field filled from the method's published defaults."""
        defaults = METHOD_DEFAULTS[self.method]
        values = {name: getattr(self, name) for name in self.field_names()}
        for name, default in defaults.items():
            if values[name] is None:
                values[name] = default
        if self.method == "cr":
            if self.cd_scope is not None:
                raise TrainConfigError("cd_scope applies to Custom Diffusion only; drop it or use --method cd / cd+cr.")
            values["token_lr"] = self.token_lr if self.token_lr is not None else values["lr"]
        elif self.method == "cd" and self.token_lr is None:
            values["token_lr"] = values["lr"]  # as the Custom Diffusion example: one optimizer group
        values["token"] = self.token or DEFAULT_TOKEN
        values["validation_prompt"] = self.validation_prompt or values["prompt"]
        return TrainConfig(**values)

    @property
    def trains_deltas(self) -> bool:
        return "cd" in self.method.split("+")

    @property
    def cross_initialised(self) -> bool:
        return "cr" in self.method.split("+")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
