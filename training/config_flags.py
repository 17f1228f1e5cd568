"""Command-line flags generated from a config dataclass: each field is defined once, with its help text and CLI kind.

A field declared with :func:`option` carries its help text and how it is spelled on the command line in its
``dataclasses.field`` metadata; :func:`add_config_arguments` turns every such field into an ``argparse`` flag and
:func:`config_values` reads the parsed flags back by the same names. The web UI builds its form from the same
:func:`flag_specs`, so a field added to the dataclass appears in the CLI and in the page without a second copy.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import MISSING, dataclass
from typing import Any, Callable

from subjectgen_diffusers.errors import SubjectgenError

# How a field is spelled on the command line:
#   "value":     --flag VALUE (type from the field's annotation: int, float or str)
#   "switch":    --flag sets True (store_const); absent leaves the config file's / dataclass's value
#   "negatable": --flag / --no-flag (argparse.BooleanOptionalAction)
#   "bool":      --flag BOOL, BOOL one of true/false/yes/no/on/off/1/0
FLAG_KINDS = ("value", "switch", "negatable", "bool")
META = "subjectgen_flag"  # the metadata key of an option's spec


class ConfigFlagError(SubjectgenError):
    """A config dataclass field cannot become a flag (no help text, an unknown kind or type)."""


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def option(default: Any = MISSING, *, help: str | Callable[[], str] | None = None,  # noqa: A002
           kind: str | None = None, choices: tuple | Callable[[], tuple] | None = None, metavar: str | None = None,
           default_text: str | None = None, repeatable: bool = False, cli: bool = True, required: bool = False,
           positional: bool = False, experiment: bool = True, default_factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field that is also a command-line flag.

    ``help`` (text, or a function giving it when the parser is built) is the flag's help; ``default_text`` replaces
    the generated "(default: ...)" note; ``choices`` may be a function (a registry read when the parser is built);
    ``repeatable`` makes the flag take several values (``--flag A --flag B`` -> a list); ``cli=False`` keeps the
    field in config files only (its ``help`` then documents the file key). ``required`` makes the flag required
    on the command line, ``positional`` makes it a positional argument (its metavar: the field's name in capitals);
    ``experiment=False`` keeps the field out of the experiment file's section of that command (the runner sets it).
    """
    if kind is not None and kind not in FLAG_KINDS:
        raise ConfigFlagError(f"option kind must be one of {list(FLAG_KINDS)}, got {kind!r}.")
    spec = dict(help=help, kind=kind, choices=choices, metavar=metavar, default_text=default_text,
                repeatable=repeatable, cli=cli, required=required, positional=positional, experiment=experiment)
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata={META: spec})
    return dataclasses.field(default=default, metadata={META: spec})


@dataclass(frozen=True)
class FlagSpec:
    """One flag of a config dataclass, resolved: everything the parser and the form need."""

    name: str  # the dataclass field (and the argparse dest)
    flag: str  # --like-this
    help: str  # the field's help text, without the default note
    kind: str  # one of FLAG_KINDS
    type: Callable[[str], Any] | None  # converter of a "value" / "bool" flag's text
    choices: tuple | None
    metavar: str | None
    default: Any  # the dataclass default (None when the field has none)
    default_text: str | None
    repeatable: bool
    required: bool = False  # the command line must give it
    positional: bool = False  # a positional argument, not a --flag


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}
_AS_STR = ("Path",)  # annotations read as text on the command line (the dataclass converts them)


def _base_type(annotation: Any, repeatable: bool = False) -> str:
    """'int' for ``int``, ``int | None``, ``"int | None"``; for a repeatable field also ``list[int]`` and
    ``int | list[int]``; any other annotation is returned as written (an error below)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    parts = [p.strip() for p in text.replace("Optional[", "").rstrip("]").split("|") if p.strip() != "None"]
    if repeatable:
        parts = [p[len("list["):-1] if p.startswith("list[") and p.endswith("]") else p for p in parts]
    base = parts[0] if len(set(parts)) == 1 else text
    return "str" if base in _AS_STR else base


def flag_specs(config_class: type, *, cli_only: bool = True) -> list[FlagSpec]:
    """The flags of ``config_class`` in field order; fields marked ``cli=False`` are left out (unless ``cli_only``
    is False). A field without :func:`option` metadata is an error: every field says what it does."""
    out = []
    for field in dataclasses.fields(config_class):
        spec = field.metadata.get(META)
        if spec is None or not spec["help"]:
            raise ConfigFlagError(f"{config_class.__name__}.{field.name} has no help text: declare it with "
                                  f"subjectgen_training.config_flags.option(..., help='what it does').")
        if cli_only and not spec["cli"]:
            continue
        base = _base_type(field.type, spec["repeatable"])
        kind = spec["kind"] or ("switch" if base == "bool" else "value")
        if spec["cli"] and kind == "value" and base not in ("int", "float", "str"):
            raise ConfigFlagError(f"{config_class.__name__}.{field.name}: a value flag needs an int, float or str "
                                  f"field, got {field.type!r}; give option(kind=...) or cli=False.")
        choices = spec["choices"]() if callable(spec["choices"]) else spec["choices"]
        help_text = spec["help"]() if callable(spec["help"]) else spec["help"]
        out.append(FlagSpec(
            name=field.name, flag="--" + field.name.replace("_", "-"), help=help_text, kind=kind,
            type=parse_bool if kind == "bool" else (_TYPES.get(base) if kind == "value" and base != "str" else None),
            choices=tuple(choices) if choices else None,
            metavar=spec["metavar"] or ("BOOL" if kind == "bool" else None),
            default=None if field.default is MISSING else field.default, default_text=spec["default_text"],
            repeatable=spec["repeatable"], required=spec.get("required", False),
            positional=spec.get("positional", False),
        ))
    return out


def full_help(spec: FlagSpec, describe_default: Callable[[FlagSpec], str] | None = None) -> str:
    """The help line as ``--help`` shows it: the field's help and its default note in brackets."""
    if spec.default_text is not None:
        shown = spec.default_text
    elif spec.positional:
        return spec.help
    elif spec.required:
        shown = "required"
    elif describe_default is not None:
        shown = describe_default(spec)
    else:
        shown = f"default: {spec.default}"
    return f"{spec.help} ({shown})" if shown else spec.help


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type,
                         describe_default: Callable[[FlagSpec], str] | None = None,
                         skip: set[str] | frozenset[str] = frozenset()) -> list[FlagSpec]:
    """Add one flag per CLI field of ``config_class`` (except those in ``skip``) to ``parser`` (or an argument
    group). Every flag's argparse default is None, so a flag only overrides a config file's value when it is given."""
    specs = [spec for spec in flag_specs(config_class) if spec.name not in skip]
    for spec in specs:
        add_flag(parser, spec, describe_default)
    return specs


def add_flag(parser: argparse.ArgumentParser, spec: FlagSpec,
             describe_default: Callable[[FlagSpec], str] | None = None) -> None:
    """The ``argparse`` argument of one field."""
    kwargs: dict[str, Any] = dict(default=None, dest=spec.name,
                                  help=full_help(spec, describe_default).replace("%", "%%"))
    if spec.positional:
        kwargs.pop("default")
        kwargs.pop("dest")
        parser.add_argument(spec.name, metavar=spec.metavar or spec.name.upper(), type=spec.type, **kwargs)
        return
    if spec.required:
        kwargs["required"] = True
    if spec.kind == "switch":
        kwargs.update(action="store_const", const=True)
    elif spec.kind == "negatable":
        kwargs.update(action=argparse.BooleanOptionalAction)
    else:
        if spec.type is not None:
            kwargs["type"] = spec.type
        if spec.choices:
            kwargs["choices"] = list(spec.choices)
        if spec.metavar:
            kwargs["metavar"] = spec.metavar
        if spec.repeatable:
            kwargs["action"] = "append"
    parser.add_argument(spec.flag, **kwargs)


def config_values(args: argparse.Namespace, config_class: type) -> dict[str, Any]:
    """``{field: value}`` of the flags that were given, read back by the dataclass's own field names."""
    names = [f.name for f in dataclasses.fields(config_class)]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def config_from_args(args: argparse.Namespace, config_class: type, **values: Any) -> Any:
    """``config_class`` built from the flags that were given (its own defaults for the rest) and ``values`` (what
    the command fills in itself)."""
    return config_class(**{**config_values(args, config_class), **values})


def namespace_values(args: argparse.Namespace, config_class: type) -> dict[str, Any]:
    """``{field: value}`` for every field of ``config_class`` that the parser defines (given or at its default):
    a command whose flags are named after its config's fields builds the config with no hand copy."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class) if hasattr(args, f.name)}
