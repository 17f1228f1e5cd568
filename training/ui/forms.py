"""The training form, derived from one definition: the ``subjectgen train`` parser over :class:`TrainConfig`.

Every ``subjectgen train`` flag whose destination is a :class:`training.train_config.TrainConfig` field becomes a form
field with the flag's help text, choices and value type; the method's recipe (``training/methods``) fills the value
when the CLI's own default is "the method's". A field added to ``TrainConfig`` and to ``train``'s parser therefore
appears in the UI with no third copy. Fields the page sets itself (base, photos, out, method, reg_dir, resume) are left
out of the generic list.
"""

from __future__ import annotations

import argparse
import dataclasses
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
    parse: Any = None  # the parser's converter (argparse ``type``), used on text input

    def read(self, value: Any) -> Any:
        """The typed value of a form input; ``None`` / empty text means "not given"."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
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
    """The ``subjectgen train`` sub-parser, built by the CLI's own code."""
    from training.cli import build_parser as default_build

    parser = (build_parser or default_build)("train")
    for action in parser._actions:  # noqa: SLF001 - argparse keeps sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return action.choices["train"]
    raise FormError("the CLI has no `train` command.")


def _kind(action: argparse.Action, field: dataclasses.Field) -> str:
    if action.choices:
        return "choice"
    if isinstance(action, (argparse._StoreConstAction, argparse.BooleanOptionalAction)):  # noqa: SLF001
        return "bool"
    if action.type is int:
        return "int"
    if action.type is float:
        return "float"
    if field.type in ("bool", "bool | None") or field.type is bool:
        return "bool"
    return "text"


def train_form_fields(parser: argparse.ArgumentParser | None = None, config_class=None) -> list[FormField]:
    """One :class:`FormField` per ``train`` flag that sets a ``config_class`` field, in the parser's order."""
    from training.train_config import TrainConfig

    config_class = config_class or TrainConfig
    parser = parser or train_parser()
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    out = []
    for action in parser._actions:  # noqa: SLF001
        if action.dest not in fields or action.dest in PAGE_FIELDS or not action.option_strings:
            continue
        field = fields[action.dest]
        default = field.default if field.default is not dataclasses.MISSING else None
        help_text = (action.help or "").replace("%(default)s", str(default))
        out.append(FormField(
            name=action.dest, flag=action.option_strings[-1], help=help_text, kind=_kind(action, field),
            choices=tuple(str(c) for c in action.choices or ()), default=default, parse=action.type,
        ))
    return out


def recipe_values(method: str) -> dict[str, Any]:
    """The values the method's published recipe gives to fields left unset (what ``TrainConfig.resolved`` fills)."""
    from training.methods import get_method

    return dict(get_method(method).defaults)


def initial_value(field: FormField, method: str) -> Any:
    """What the form shows first: the recipe's value, else TrainConfig's default."""
    recipe = recipe_values(method)
    value = recipe.get(field.name, field.default)
    if field.kind == "bool":
        return bool(value)
    return value


def read_form(fields: list[FormField], values: list[Any]) -> dict[str, Any]:
    """``{field: typed value}`` for the inputs that were given (``None`` = left to the recipe)."""
    out = {}
    for field, value in zip(fields, values, strict=True):
        typed = field.read(value)
        if typed is not None:
            out[field.name] = typed
    return out
