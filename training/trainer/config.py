"""The typed configuration of one training run (``subjectgen train``).

Fields left as ``None`` are filled by :meth:`TrainConfig.resolved` from the chosen method's published recipe, which
lives with the method (``training/methods/cd.py``, ``cr.py``, ``cd_cr.py``; README "Recipes"). ``lr`` is always the
rate of the Custom Diffusion weight deltas and ``token_lr`` the rate of the new token rows; with ``scale_lr`` (the
default, as both references' recipes) they are multiplied by the method's reference rule, and the rates the optimizer
really used are written to ``train_config.json`` as ``effective_lr`` / ``effective_token_lr``.

A YAML/TOML file holds the same fields; unknown keys are errors; command-line flags override the file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from subjectgen_diffusers.base_configs import native_resolution
from subjectgen_diffusers.errors import SubjectgenError
from subjectgen_diffusers.strict_config import check_known_keys

from subjectgen_training.config_files import read_mapping
from subjectgen_training.config_flags import option
from subjectgen_training.methods import get_method, method_names
from subjectgen_training.data.resolution import check_resolution
from subjectgen_training.trainer.method_options import (  # noqa: F401 - method_fields re-exported
    field_names,
    method_fields,
    method_keys_to_options,
)

METHODS = method_names()
MIXED_PRECISION = ("no", "fp16", "bf16")
CONFIG_FILE_NAME = "train_config.json"
DEFAULT_TOKEN = "<new1>"
DEFAULT_METHOD = "cd+cr"
# What train_config.json records beside the fields: figures derived from them (the rates the optimizer used and on how
# many processes). A recorded file is a valid config: these are accepted and must follow from its fields.
DERIVED_KEYS = ("effective_lr", "effective_token_lr", "num_processes")


class TrainConfigError(SubjectgenError):
    """A training configuration value or file is wrong; the message names the field and what is allowed."""


def _methods_help() -> str:
    from subjectgen_training.methods import REGISTRY

    return "; ".join(f"{name}: {method.info.title}" for name, method in REGISTRY.items())


@dataclass
class JointSubject:
    """One person of a joint run (Custom Diffusion's joint multi-concept training, Kumari et al. 2023, Sec. 3.2)."""

    photos: str  # folder of that person's photos, captioned with its own token
    token: str  # that person's token; every subject of the run needs its own
    class_prompt: str | None = None  # its class phrase (recorded for `subjectgen merge`); default: the run's

    def __post_init__(self) -> None:
        if not self.photos:
            raise TrainConfigError("subjects: every subject needs `photos`.")
        if not self.token or any(c.isspace() for c in self.token):
            raise TrainConfigError(f"subjects: token must be one word without spaces, got {self.token!r}.")


@dataclass
class TrainConfig:
    """Everything one training run needs. ``None`` means "the method's published default".

    Each field is defined once: its default, help text and command-line spelling (:func:`subjectgen_training.config_flags.option`)
    make the ``subjectgen train`` flag and the web UI's form field. ``cli=False`` fields are config-file keys only.
    """

    base: str = option(help="Stable Diffusion 1.x/2.x or SDXL: a local diffusers folder, a Hub id or builtin:NAME (`subjectgen "
                       "models`; on builtin:toy-base the defaults are the toy world's recipe, printed at the start)",
                       default_text="required, here or in --config")
    photos: str | None = option(help="folder of 4-20 photos of the person (or a `subjectgen prepare` output); fewer "
                                "than 4 trains but warns. Repeat it with one --token each to train several people "
                                "jointly (one set of deltas, one token per person)", repeatable=True,
                                default_text="required, here or in --config")
    method: str = option(help=_methods_help, choices=method_names, default_text=f"default: {DEFAULT_METHOD}")
    out: str = option(help="output folder for the subject (created; must not be a file); checkpoints go beside it in "
                      "<out>.checkpoints/", default_text="required, here or in --config")
    # several people in one run instead of `photos`/`token`: one set of deltas, one token each, each person's photos
    # captioned with its own token (joint training); the CLI's repeated --photos/--token make it
    subjects: list[JointSubject] | None = option(None, cli=False, help="several people in one run: a list of "
                                                 "{photos, token, class_prompt} (joint training)")
    token: str | None = option(None, help="the new token string (one per --photos in a joint run)", repeatable=True,
                               default_text=f"default: {DEFAULT_TOKEN}")
    reg_dir: str | None = option(None, help="regularisation images for prior preservation",
                                 default_text="default: none, no prior preservation")
    steps: int | None = option(None, help="optimizer steps")
    resolution: int | None = option(None, help="training image side in pixels, a multiple of 8",
                                    default_text="default: the base model's native size, e.g. 512 for SD 1.5, 32 for "
                                    "the shipped toy model")
    batch_size: int | None = option(None, help="photos per step (plus as many class images with --reg-dir)")
    gradient_accumulation_steps: int = option(1, metavar="N", help="batches whose gradients add up to one optimizer "
                                              "step: N on one GPU reproduces N GPUs' global batch (and, with "
                                              "--scale-lr, their rate); --steps counts optimizer steps")
    lr: float | None = option(None, help="rate of the Custom Diffusion weight deltas (cd, cd+cr), before --scale-lr")
    token_lr: float | None = option(None, help="rate of the new token vectors (every method), before --scale-lr")
    scale_lr: bool = option(True, kind="negatable",
                            help="multiply the rates by the method's reference rule; --no-scale-lr uses them as given")
    seed: int = option(0, help="seed of every random draw (photos, noise, timesteps)")
    prior_loss_weight: float = option(1.0, help="weight of the regularisation images' loss")
    num_vectors: int | None = option(None, help="embedding vectors of the new token")
    prompt: str | None = option(None, help='instance prompt with {} for the token, e.g. "photo of a {} person"')
    class_prompt: str | None = option(None, help="prompt of regularisation images that have no caption of their own")
    caption_templates: bool | None = option(None, cli=False, help="wrap the prompt in varied caption templates "
                                            "(Cross Initialization)")
    flip_p: float | None = option(None, help="probability of a horizontally flipped photo")
    random_rescale: bool | None = option(None, kind="bool", help="Custom Diffusion's zoom in/out augmentation")
    rescale_variants: int = option(4, cli=False, help="pre-encoded random-rescale variants per photo and flip "
                                   "(latents cached once)")
    mask_loss: bool = option(False, help="weight the loss by prepared face masks")
    mask_background_weight: float = option(0.2, cli=False, help="loss weight outside the face when mask_loss is on")
    mixed_precision: str = option("no", choices=MIXED_PRECISION, help="autocast dtype (fp16 needs a CUDA GPU)")
    gradient_checkpointing: bool = option(False, help="recompute activations in the backward pass: less memory, "
                                          "slower")
    use_8bit_adam: bool = option(False, help="bitsandbytes' 8-bit AdamW (needs a CUDA GPU)")
    adam_weight_decay: float = option(1e-2, cli=False, help="AdamW's weight decay (on the trained tensors only)")
    max_grad_norm: float | None = option(None, help="gradient clipping norm, 0 = none")
    checkpoint_every: int = option(0, help="steps between resumable checkpoints, 0 = none")
    checkpoints_total_limit: int = option(2, help="keep the last K checkpoints")
    resume: bool = option(False, help="continue from the latest checkpoint in <out>.checkpoints/")
    restart: bool = option(False, help="start again from step 0 over the checkpoints a stopped run left in "
                           "<out>.checkpoints/ (they are deleted); without --resume or --restart such a run refuses")
    keep_checkpoints: bool = option(False, help="keep <out>.checkpoints/ after a finished run instead of deleting it")
    validation_every: int = option(0, help="steps between validation images (in <out>/validation/), 0 = none")
    validation_prompt: str | None = option(None, help="prompt of the validation images",
                                           default_text="default: the instance prompt")
    log_with: str | None = option(None, choices=("tensorboard",), help="write training logs under <out>/logs",
                                  default_text="default: none")
    revision: str | None = option(None, help="Hub revision (branch, tag or commit) of --base",
                                  default_text="default: main")
    save_dtype: str = option("float32", cli=False, help="dtype of the stored subject tensors")
    save_rank: int | None = option(None, metavar="R", help="store the weight deltas as rank-R factors (see `subjectgen "
                                   "compress`; 16 kept toy likeness within 0.01)",
                                   default_text="default: none, exact deltas")
    # the chosen method's own fields (its `options` dataclass, registered with the method); a file and the command
    # line give them as top-level keys (`cd_scope: kv`, --cd-scope kv), train_config.json records them so
    options: Any = option(None, cli=False, help="the chosen method's own fields (its config dataclass), given as "
                          "top-level keys")

    def __post_init__(self) -> None:
        if self.method not in method_names():
            raise TrainConfigError(f"method must be one of {list(method_names())}, got {self.method!r}.")
        for name in ("base", "out"):
            if not getattr(self, name):
                raise TrainConfigError(f"`{name}` is required.")
        self._check_subjects()
        self._check_options()
        if self.resume and self.restart:
            raise TrainConfigError("--resume continues a stopped run and --restart starts it over: give one of them.")
        if self.mixed_precision not in MIXED_PRECISION:
            raise TrainConfigError(f"mixed_precision must be one of {list(MIXED_PRECISION)}, got {self.mixed_precision!r}.")
        if self.token is not None and (not self.token or any(c.isspace() for c in self.token)):
            raise TrainConfigError(f"token must be one word without spaces, got {self.token!r}.")
        positive = ("steps", "batch_size", "gradient_accumulation_steps", "num_vectors", "rescale_variants",
                    "checkpoints_total_limit", "save_rank")
        for name in positive:
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise TrainConfigError(f"{name} must be >= 1, got {value}.")
        if self.resolution is not None:
            check_resolution(self.resolution, TrainConfigError)  # the rule and words of every command
        for name in ("lr", "token_lr"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise TrainConfigError(f"{name} must be > 0, got {value}.")
        for name in ("prior_loss_weight", "checkpoint_every", "validation_every", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise TrainConfigError(f"{name} must be >= 0, got {value}.")
        if self.flip_p is not None and not 0.0 <= self.flip_p <= 1.0:
            raise TrainConfigError(f"flip_p must be in [0, 1], got {self.flip_p}.")
        if self.log_with not in (None, "tensorboard"):
            raise TrainConfigError(f"log_with must be null or 'tensorboard', got {self.log_with!r}.")
        if self.save_rank is not None and not get_method(self.method).info.has_deltas:
            raise TrainConfigError(f"save_rank compresses weight deltas, and --method {self.method} trains none; "
                                   "drop --save-rank.")
        if self.save_dtype not in ("float32", "float16", "bfloat16"):
            raise TrainConfigError(f"save_dtype must be float32, float16 or bfloat16, got {self.save_dtype!r}.")
        for name in ("prompt", "validation_prompt"):
            value = getattr(self, name)
            if value is not None and "{}" not in value:
                raise TrainConfigError(f"{name} must contain {{}} where the token goes, got {value!r}.")

    def _check_subjects(self) -> None:
        if self.subjects is None:
            if not self.photos:
                raise TrainConfigError("`photos` is required (or `subjects` listing several people).")
            return
        self.subjects = [s if isinstance(s, JointSubject) else _joint_subject(s) for s in self.subjects]
        if len(self.subjects) < 2:
            raise TrainConfigError("`subjects` lists the people of a joint run: give two or more (for one person "
                                   "use `photos` and `token`).")
        if self.photos or (self.token is not None and self.token != self.subjects[0].token):
            raise TrainConfigError("give either `photos`/`token` (one person) or `subjects` (several), not both.")
        tokens = [s.token for s in self.subjects]
        repeated = sorted({t for t in tokens if tokens.count(t) > 1})
        if repeated:
            raise TrainConfigError(f"subjects: every person needs its own token; {repeated} is given twice.")

    def _check_options(self) -> None:
        """``options``: the method's own config (built from a mapping of its fields; the method's defaults when None)."""
        options_class = get_method(self.method).options
        if self.options is None:
            self.options = {}
        if isinstance(self.options, dict):
            check_known_keys(options_class, self.options, TrainConfigError, f"method {self.method}'s fields")
            try:
                self.options = options_class(**self.options)
            except SubjectgenError as error:
                raise TrainConfigError(str(error)) from error
        if not isinstance(self.options, options_class):
            raise TrainConfigError(f"options of method {self.method} must be a {options_class.__name__}, got "
                                   f"{type(self.options).__name__}.")

    def __getattr__(self, name: str) -> Any:
        """A method's own field read on the config (``config.cd_scope``): the value in ``options``."""
        options = self.__dict__.get("options")
        if options is not None and not isinstance(options, dict) and name in field_names(type(options)):
            return getattr(options, name)
        if not name.startswith("_") and name in method_fields():
            return None  # another method's field: this run does not have it (a cr run has no cd_scope)
        raise AttributeError(f"{type(self).__name__} has no field {name!r} (and method "
                             f"{self.__dict__.get('method')!r} has no such field of its own)")

    def people(self) -> list[JointSubject]:
        """The run's people: the ``subjects`` of a joint run, or the one ``photos``/``token`` subject."""
        if self.subjects:
            return list(self.subjects)
        return [JointSubject(self.photos, self.token or DEFAULT_TOKEN, self.class_prompt)]

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
        derived = {key: data.pop(key) for key in DERIVED_KEYS if key in data}
        if data.get("method") in (None, ""):
            data["method"] = DEFAULT_METHOD
        data = method_keys_to_options(data, set(cls.field_names()), TrainConfigError)
        check_known_keys(cls, data, TrainConfigError, "training config")
        missing = [name for name in ("base", "out") if data.get(name) in (None, "")]
        if not data.get("photos") and not data.get("subjects"):
            missing.insert(1, "photos")
        if missing:
            raise TrainConfigError(f"missing required training config keys {missing} (give them in the file or as flags).")
        try:
            config = cls(**{"photos": None, **data})
        except TypeError as error:
            raise TrainConfigError(f"bad training config: {error}") from error
        if derived:
            config.check_derived(derived)
        return config

    @classmethod
    def file_keys(cls) -> list[str]:
        """Every key a training config file takes: the shared fields and every registered method's own fields."""
        own = [name for name in cls.field_names() if name != "options"]
        return own + [name for name in method_fields() if name not in own]

    def check_derived(self, derived: dict[str, Any]) -> None:
        """The derived figures a recorded ``train_config.json`` holds must follow from its fields (an edited rate
        with a stale ``effective_lr`` is refused: which one did the user mean?)."""
        import math

        processes = derived.get("num_processes", 1)
        if not isinstance(processes, int) or processes < 1:
            raise TrainConfigError(f"num_processes must be a positive integer, got {processes!r}.")
        rates = self.resolved().effective_rates(processes)
        for key, value in (("effective_lr", rates.lr), ("effective_token_lr", rates.token_lr)):
            if key not in derived:
                continue
            recorded = derived[key]
            same = (recorded is None and value is None) or (
                isinstance(recorded, (int, float)) and value is not None and math.isclose(recorded, value, rel_tol=1e-9))
            if not same:
                raise TrainConfigError(
                    f"{key} {recorded!r} does not follow from the other fields (they give {value!r} on {processes} "
                    f"process(es)); {key} is derived, written by a run: delete it, or set the rate it comes from.")

    @classmethod
    def read_config_file(cls, path: str | Path) -> dict[str, Any]:
        """A config file's mapping with the derived keys of a recorded ``train_config.json`` checked and taken out,
        so that flags can override its fields (a new ``--lr`` makes the old ``effective_lr`` moot)."""
        data = cls.read_file(path)
        derived = {key: data.pop(key) for key in DERIVED_KEYS if key in data}
        if derived:
            try:
                cls.from_dict({**data, **derived})
            except TrainConfigError as error:
                if any(key in str(error) for key in DERIVED_KEYS):
                    raise TrainConfigError(f"{path}: {error}") from error
        return data

    @classmethod
    def read_file(cls, path: str | Path) -> dict[str, Any]:
        """The raw mapping of a YAML (.yaml/.yml), TOML (.toml) or JSON file; not yet validated."""
        return read_mapping(path, TrainConfigError)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a config file; keyword ``overrides`` (flags) that are not None replace its values."""
        data = cls.read_config_file(path)
        data.update({key: value for key, value in overrides.items() if value is not None})
        return cls.from_dict(data)

    # -- defaults ----------------------------------------------------------------------------------------------
    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` recipe field filled from the method's published defaults and checked by it."""
        method = get_method(self.method)
        given = {name: getattr(self, name) for name in self.field_names()}
        values = dict(given)
        for name, default in method.defaults.items():
            if values[name] is None:
                values[name] = default
        try:
            values = method.resolve(values, given)
        except SubjectgenError as error:
            raise TrainConfigError(str(error)) from error
        values["token"] = self.subjects[0].token if self.subjects else (self.token or DEFAULT_TOKEN)
        values["validation_prompt"] = self.validation_prompt or values["prompt"]
        return type(self)(**values)

    def sized(self) -> TrainConfig:
        """A copy with ``resolution`` set: the base model's native size when None (reads only the base's configs)."""
        if self.resolution is not None:
            return self
        from subjectgen_training.models.builtin_models import resolve_model

        return dataclasses.replace(self, resolution=native_resolution(resolve_model(self.base), self.revision))

    def effective_rates(self, num_processes: int):
        """The rates the optimizer uses on ``num_processes`` processes (a resolved config): ``Rates(lr, token_lr)``."""
        return get_method(self.method).rates(self, num_processes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a file holds them: the method's own fields as top-level keys."""
        data = dataclasses.asdict(self)
        options = data.pop("options") or {}
        return {**data, **options}


def _joint_subject(data: Any) -> JointSubject:
    if not isinstance(data, dict):
        raise TrainConfigError(f"subjects: each entry is a mapping of photos, token and class_prompt, got {data!r}.")
    check_known_keys(JointSubject, data, TrainConfigError, "subjects entry")
    return JointSubject(**data)
