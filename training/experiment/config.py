"""The experiment file: subjects x setups, with the shared regularisation sets, generation and evaluation settings.

A YAML file maps onto these dataclasses; every level rejects unknown keys and lists the allowed ones. Shipped
configs live in ``training/configs/<name>.yaml`` and are addressed by name (``five_setups``, ``five_setups_tiny``);
paths inside a file (subject photos) are relative to the file. ``train`` maps onto
:class:`subjectgen_training.trainer.config.TrainConfig` fields: the experiment's ``train`` applies to every setup, a setup's own
``train`` overrides it, and ``None`` keeps the method's published default.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from subjectgen_diffusers.errors import SubjectgenError
from subjectgen_diffusers.strict_config import check_known_keys
from subjectgen_training.config_flags import META
from subjectgen_training.experiment.graph import ResourceSpec, check_resources

# TrainConfig fields the runner sets itself: they may not appear under `train`.
RUNNER_TRAIN_FIELDS = ("base", "photos", "method", "out", "reg_dir", "resume", "subjects")


class ExperimentConfigError(SubjectgenError):
    """The experiment file is wrong; the message names the key and what is allowed."""


def _build(cls, data: Any, where: str):
    """Instantiate dataclass ``cls`` from a mapping, recursing into nested dataclass fields; unknown keys fail."""
    check_known_keys(cls, data, ExperimentConfigError, where)
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        hint = hints[key]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        optional = [a for a in args if dataclasses.is_dataclass(a)] if type(None) in args else []
        if optional and value is not None:  # `Spec | None`
            hint = optional[0]
        if dataclasses.is_dataclass(hint):
            value = _build(hint, value, f"{where}.{key}")
        elif origin is list and args and dataclasses.is_dataclass(args[0]):
            if not isinstance(value, list):
                raise ExperimentConfigError(f"{where}.{key} must be a list.")
            value = [_build(args[0], item, f"{where}.{key}[{i}]") for i, item in enumerate(value)]
        elif origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
            if not isinstance(value, dict):
                raise ExperimentConfigError(f"{where}.{key} must be a mapping.")
            value = {name: _build(args[1], item, f"{where}.{key}.{name}") for name, item in value.items()}
        values[key] = value
    try:
        return cls(**values)
    except TypeError as error:
        raise ExperimentConfigError(f"{where}: {error}") from error


@dataclass
class SubjectSpec:
    name: str  # folder-safe name used in outputs
    # a folder of photos (relative to the config file), or a photo source: builtin:astronaut (sample photos),
    # toy:<subject spec> (a toy-world face; subjectgen_training.toy.subject_photos), see subjectgen_training.experiment.photo_sources
    photos: str
    prepare: bool = False  # run `subjectgen prepare` (face crops + masks) on the photos first
    group: str | None = None  # e.g. tuning | test: the summary reports each group's subjects apart
    token: str | None = None  # the subject's token (subjects composed together need different ones); default <new1>


@dataclass
class SetupSpec:
    name: str
    method: str  # cd | cr | cd+cr
    regularization: str | None = None  # key into `regularizations`; None trains without prior preservation
    description: str = ""
    train: dict[str, Any] = field(default_factory=dict)


def section_of(command_config: type, name: str, *, defaults: dict[str, Any] | None = None,
               types: dict[str, Any] | None = None, recorded: tuple[str, ...] = ()) -> type:
    """The experiment file's section for a command: a dataclass with every field of ``command_config`` (its type,
    default and :func:`~subjectgen_training.config_flags.option` help) except those marked ``experiment=False``
    (the runner sets them), so a field added to a command's config is a key of its experiment section at once.
    ``defaults`` / ``types`` replace a field's default / type in the section; ``recorded``: the keys a stage marker
    always records (others only when they differ from their default, so older markers stay valid)."""
    hints = typing.get_type_hints(command_config)
    defaults, types = defaults or {}, types or {}
    required, optional = [], []
    for spec in dataclasses.fields(command_config):
        if not spec.metadata.get(META, {}).get("experiment", True):
            continue
        kwargs: dict[str, Any] = {"metadata": spec.metadata}
        if spec.name in defaults:
            kwargs["default"] = defaults[spec.name]
        elif spec.default is not dataclasses.MISSING:
            kwargs["default"] = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            kwargs["default_factory"] = spec.default_factory
        entry = (spec.name, types.get(spec.name, hints[spec.name]), field(**kwargs))
        (optional if "default" in kwargs or "default_factory" in kwargs else required).append(entry)
    section = dataclasses.make_dataclass(name, required + optional)
    section.__module__ = __name__
    section.__doc__ = f"The experiment file's section of :class:`{command_config.__module__}.{command_config.__name__}`."
    section.RECORDED = recorded
    return section


def recorded_settings(section: Any) -> dict[str, Any]:
    """What a stage marker records of a section: its ``RECORDED`` keys, and any other key not at its default."""
    values = dataclasses.asdict(section)
    out = {}
    for spec in dataclasses.fields(section):
        default = spec.default if spec.default is not dataclasses.MISSING else (
            spec.default_factory() if spec.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        if spec.name in type(section).RECORDED or values[spec.name] != default:
            out[spec.name] = values[spec.name]
    return out


def _command_configs() -> tuple[type, type, type]:
    from subjectgen_training.evaluation.evaluate import EvaluateConfig
    from subjectgen_training.sampling.generate import GenerateConfig
    from subjectgen_training.sampling.regularize import RegularizeConfig

    return RegularizeConfig, GenerateConfig, EvaluateConfig


def regularization_section(config: type) -> type:
    """One regularisation set (:class:`subjectgen_training.sampling.regularize.RegularizeConfig`), generated once and shared."""
    return section_of(config, "RegularizationSpec", defaults={"prompt": "a photo of a person", "num": 200},
                      recorded=("model", "prompt", "num", "lora", "lora_scale", "negative_prompt", "seed", "steps",
                                "guidance", "resolution", "batch_size"))


def generation_section(config: type) -> type:
    """Sampling settings (:class:`subjectgen_training.sampling.generate.GenerateConfig`); ``prompts``: a shipped prompt set,
    a file (relative to the config), prompt text or a list."""
    return section_of(config, "GenerationSpec", defaults={"prompts": "experiment"}, types={"prompts": str | list[str]},
                      recorded=("prompts", "num_per_prompt", "seed", "steps", "guidance", "scheduler", "resolution",
                                "batch_size", "subject_phrase", "class_phrase"))


def evaluation_section(config: type) -> type:
    """Scoring settings (:class:`subjectgen_training.evaluation.EvaluateConfig`)."""
    return section_of(config, "EvaluationSpec",
                      recorded=("face_model", "clip_model", "subject_phrase", "prompt_scorer"))


RegularizationSpec = regularization_section(_command_configs()[0])
GenerationSpec = generation_section(_command_configs()[1])
EvaluationSpec = evaluation_section(_command_configs()[2])


@dataclass
class ComposeSpec:
    """Several subjects in one pipeline (``subjectgen_training.experiment.compose``): per group, each subject's scores with the
    group's subjects loaded together (deltas added), after Custom Diffusion's constrained merge, and from one joint
    run, beside its scores alone (its run of ``setup``)."""

    setup: str  # the setup every subject was trained with alone; the joint runs use its method and settings
    groups: list[list[str]]  # subject names composed together, e.g. [[a, b], [a, b, c]]
    joint_steps_per_subject: bool = True  # a joint run takes the setup's steps once per person (same photo views each)


@dataclass
class ExperimentConfig:
    name: str
    base: str  # SD 1.x model every setup trains on (Hub id, folder or builtin:tiny-sd)
    subjects: list[SubjectSpec]
    setups: list[SetupSpec]
    description: str = ""
    regularizations: dict[str, RegularizationSpec] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    generate: GenerationSpec = field(default_factory=GenerationSpec)
    evaluate: EvaluationSpec = field(default_factory=EvaluationSpec)
    baseline: bool = True  # also sample and score the untrained base model (setup row "baseline")
    compose: ComposeSpec | None = None  # also compose subjects (added / merged / joint; summary `rows`)
    # Ray resources per stage kind (photos, prepare, regularize, train, generate, evaluate, merge), used by
    # `--executor ray`; e.g. {train: {num_gpus: 1}, generate: {num_gpus: 1}}. Default: 1 CPU, no GPU, 2 retries.
    resources: dict[str, ResourceSpec] = field(default_factory=dict)
    source: str | None = None  # folder of the config file (relative paths resolve against it); set by the loader

    def __post_init__(self) -> None:
        from subjectgen_training.trainer.config import METHODS, TrainConfig

        for kind, names in (("subject", [s.name for s in self.subjects]), ("setup", [s.name for s in self.setups])):
            if not names:
                raise ExperimentConfigError(f"the experiment needs at least one {kind}.")
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ExperimentConfigError(f"{kind} names must be unique; repeated: {duplicates}.")
            bad = [n for n in names if not n or "/" in n or n.startswith(".") or (kind == "setup" and n == "baseline")]
            if bad:
                raise ExperimentConfigError(f"{kind} names become folder names (and `baseline` is the untrained row); "
                                            f"rename {bad}.")
        allowed_train = [f for f in TrainConfig.file_keys() if f not in RUNNER_TRAIN_FIELDS]
        for where, overrides in [("train", self.train)] + [(f"setups.{s.name}.train", s.train) for s in self.setups]:
            unknown = sorted(set(overrides) - set(allowed_train))
            if unknown:
                raise ExperimentConfigError(f"{where}: unknown keys {unknown}; allowed keys are {allowed_train}.")
        prompts = self.generate.prompts
        if isinstance(prompts, list) and (not prompts or not all(isinstance(p, str) and p.strip() for p in prompts)):
            raise ExperimentConfigError("generate.prompts: a list must hold one or more prompt strings.")
        for setup in self.setups:
            if setup.method not in METHODS:
                raise ExperimentConfigError(f"setup {setup.name}: method must be one of {list(METHODS)}.")
            if setup.regularization is not None and setup.regularization not in self.regularizations:
                raise ExperimentConfigError(
                    f"setup {setup.name}: regularization {setup.regularization!r} is not defined; defined ones are "
                    f"{sorted(self.regularizations)}."
                )

        if self.compose is not None:
            self._check_compose()
        check_resources(self.resources, ExperimentConfigError)

    def _check_compose(self) -> None:
        compose, names = self.compose, [s.name for s in self.subjects]
        if compose.setup not in [s.name for s in self.setups]:
            raise ExperimentConfigError(f"compose.setup {compose.setup!r} is not one of the setups "
                                        f"{[s.name for s in self.setups]}.")
        for group in compose.groups:
            unknown = [n for n in group if n not in names]
            if unknown or len(set(group)) < 2 or len(set(group)) != len(group):
                raise ExperimentConfigError(f"compose.groups: {group} must name two or more different subjects of "
                                            f"{names}.")
            tokens = [next(s.token for s in self.subjects if s.name == n) for n in group]
            if None in tokens or len(set(tokens)) != len(tokens):
                raise ExperimentConfigError(f"compose.groups: the subjects {group} are loaded together, so each needs "
                                            f"its own `token` (got {tokens}).")

    def prompt_spec(self) -> str:
        """The generation prompts as :func:`subjectgen_training.prompts.load_prompts` reads them (a list joined by ``|``)."""
        prompts = self.generate.prompts
        return " | ".join(prompts) if isinstance(prompts, list) else self.resolve_path(prompts)

    def resolve_path(self, value: str) -> str:
        """A path from the file, made absolute against the file's folder (source ids and absolute paths kept)."""
        from subjectgen_training.experiment.photo_sources import is_photo_source

        if is_photo_source(value) or self.source is None or Path(value).is_absolute():
            return value
        candidate = Path(self.source) / value
        return str(candidate) if candidate.exists() else value


def shipped_configs() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("subjectgen_training").joinpath("configs").iterdir() if p.name.endswith(".yaml"))


def config_path(name_or_path: str | Path) -> Path:
    """The YAML file of a shipped experiment name, or the given path."""
    path = Path(name_or_path)
    if not path.is_file():
        name = str(name_or_path)
        if name not in shipped_configs():
            raise ExperimentConfigError(f"{name} is neither a file nor a shipped experiment; shipped ones are "
                                        f"{shipped_configs()}.")
        path = Path(str(resources.files("subjectgen_training").joinpath("configs", f"{name}.yaml")))
    return path


def read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ExperimentConfigError(f"{path} is not valid YAML: {error}") from error


def experiment_config_class(regularize: type | None = None, generate: type | None = None,
                            evaluate: type | None = None) -> type[ExperimentConfig]:
    """:class:`ExperimentConfig` whose sections come from the given command configs (a command config subclass
    with a field of its own gives a section with that key); the ones not given keep the shipped sections."""
    regularization = regularization_section(regularize) if regularize else RegularizationSpec
    generation = generation_section(generate) if generate else GenerationSpec
    evaluation = evaluation_section(evaluate) if evaluate else EvaluationSpec
    return dataclasses.make_dataclass("ExperimentConfig", [
        ("regularizations", dict[str, regularization], field(default_factory=dict)),
        ("generate", generation, field(default_factory=generation)),
        ("evaluate", evaluation, field(default_factory=evaluation)),
    ], bases=(ExperimentConfig,))


def load_experiment_config(name_or_path: str | Path, config_class: type[ExperimentConfig] = ExperimentConfig
                           ) -> ExperimentConfig:
    """Read a shipped config by name or a YAML file by path."""
    path = config_path(name_or_path)
    data = read_yaml(path)
    if isinstance(data, dict):
        data = {**data, "source": str(path.resolve().parent)}
    return _build(config_class, data, path.name)
