"""The training form, derived from one definition: the fields of :class:`TrainConfig` and their flag metadata.

:func:`subjectgen_training.config_flags.flag_specs` gives every command-line field of
:class:`subjectgen_training.trainer.config.TrainConfig` with its help text, choices and kind; ``subjectgen train``'s parser is
generated from the same specs, so a field added to ``TrainConfig`` appears in ``--help`` and here with no second copy.
The method's recipe (``training/methods``) fills the value when the default is "the method's". Fields the page sets
itself (base, photos, out, method, reg_dir, resume) are left out of the generic list.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from subjectgen_diffusers.errors import SubjectgenError

# Set by the page from its own controls (the workdir layout, the method radio, the regularisation choice, Resume).
PAGE_FIELDS = ("base", "photos", "out", "method", "reg_dir", "resume")


class FormError(SubjectgenError):
    """A form value cannot be read as the field's type; the message names the field."""


@dataclass(frozen=True)
class FormField:
    name: str  # the TrainConfig field
    flag: str  # the CLI flag, e.g. --token-lr
    help: str
    kind: str  # "int" | "float" | "bool" | "choice" | "text"
    choices: tuple[str, ...] = ()
    default: Any = None  # TrainConfig's default (None: the method's recipe decides)
    parse: Any = None  # the flag's converter of text input (a BOOL flag's true/false)
    repeatable: bool = False  # the flag takes several values: the box takes them separated by commas
    methods: tuple[str, ...] = ()  # a method's own field: the methods that have it (shown for them only); (): all

    def applies_to(self, method: str) -> bool:
        return not self.methods or method in self.methods

    def read(self, value: Any) -> Any:
        """The typed value of a form input; ``None`` / empty text means "not given"."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if self.repeatable:
            items = [part.strip() for part in str(value).split(",") if part.strip()]
            return [FormField(self.name, self.flag, self.help, self.kind, self.choices).read(item) for item in items]
        if self.kind == "bool":
            return bool(value)
        if self.kind in ("int", "float"):
            try:
                float(value)
            except ValueError:
                raise FormError(f"{self.flag} must be a number, got {value!r}.") from None
        if self.kind == "int":
            if float(value) != int(float(value)):
                raise FormError(f"{self.flag} must be a whole number, got {value!r}.")
            return int(float(value))
        if self.kind == "float":
            return float(value)
        if self.parse is not None and self.kind == "text":
            try:
                return self.parse(value)
            except (argparse.ArgumentTypeError, TypeError, ValueError) as error:
                raise FormError(f"{self.flag}: {error}") from error
        return value


def train_parser(build_parser=None) -> argparse.ArgumentParser:
    """The ``subjectgen train`` sub-parser, built by the CLI's own code (generated from the same field definitions)."""
    from subjectgen_training.cli import build_parser as default_build

    parser = (build_parser or default_build)("train")
    for action in parser._actions:  # noqa: SLF001 - argparse keeps sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return action.choices["train"]
    raise FormError("the CLI has no `train` command.")


def _kind(spec) -> str:
    if spec.choices:
        return "choice"
    if spec.kind in ("switch", "negatable", "bool"):
        return "bool"
    if spec.type is int:
        return "int"
    if spec.type is float:
        return "float"
    return "text"


def train_form_fields(config_class=None) -> list[FormField]:
    """One :class:`FormField` per command-line field of ``config_class`` (default :class:`TrainConfig`), in field
    order, then each registered method's own fields (shown for the methods that have them), with the help line
    ``subjectgen train --help`` shows for it."""
    from subjectgen_training.config_flags import flag_specs, full_help
    from subjectgen_training.methods import REGISTRY, describe_default
    from subjectgen_training.trainer.config import method_fields

    if config_class is None:
        from subjectgen_training.trainer.config import TrainConfig as config_class
    specs = [spec for spec in flag_specs(config_class) if spec.name not in PAGE_FIELDS]
    shared = {spec.name for spec in specs}
    for method in REGISTRY.values():
        names = {spec.name for spec in specs}
        specs += [spec for spec in flag_specs(method.options) if spec.name not in names]
    owners = method_fields()
    return [FormField(
        name=spec.name, flag=spec.flag, help=full_help(spec, describe_default), kind=_kind(spec),
        choices=tuple(str(c) for c in spec.choices or ()), default=spec.default,
        parse=spec.type if spec.kind == "bool" else None, repeatable=spec.repeatable,
        methods=() if spec.name in shared else tuple(owners[spec.name][0]),
    ) for spec in specs]


def recipe_values(method: str) -> dict[str, Any]:
    """The values the method's published recipe gives to fields left unset (what ``TrainConfig.resolved`` fills)."""
    from subjectgen_training.methods import get_method

    return dict(get_method(method).defaults)


def initial_value(field: FormField, method: str) -> Any:
    """What the form shows first: the recipe's value, else TrainConfig's default."""
    recipe = recipe_values(method)
    value = recipe.get(field.name, field.default)
    if field.kind == "bool":
        return bool(value)
    return value


def read_form(fields: list[FormField], values: list[Any], method: str | None = None) -> dict[str, Any]:
    """``{field: typed value}`` for the inputs that were given (``None`` = left to the recipe); with ``method``,
    only the fields of that method (the others are hidden on the page)."""
    out = {}
    for field, value in zip(fields, values, strict=True):
        if method is not None and not field.applies_to(method):
            continue
        typed = field.read(value)
        if typed is not None:
            out[field.name] = typed
    return out
