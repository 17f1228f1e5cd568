"""Typed configs fail loudly: a key that no dataclass field names, or a value of the wrong type, is an error.

Every typed config (training, generation, preparation, regularisation, evaluation, experiment, subject files) goes
through :func:`check_known_keys` before its dataclass is built, so a file saying ``lr: fast`` is answered with the
field, the type it wants and what it got, instead of a comparison failing deep inside the dataclass.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import types
import typing
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

_WORDS = {bool: "true or false", int: "a whole number (int)", float: "a number (float)", str: "text (str)",
          type(None): "null"}


def check_known_keys(cls: type, data: Any, error: type[Exception], where: str) -> None:
    """Raise ``error`` unless ``data`` is a mapping whose keys are fields of dataclass ``cls`` with values of their type.

    The message names the offending keys and lists the allowed ones, e.g.
    ``"training config: unknown keys ['stepz']; allowed keys are ['base', ...]."``, or names the field, the type it
    wants and the value it got, e.g. ``"training config: lr wants a number (float), got 'fast' (str)."``.
    """
    if not isinstance(data, Mapping):
        raise error(f"{where} must be a mapping of key: value, got {type(data).__name__}.")
    allowed = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise error(f"{where}: unknown keys {unknown}; allowed keys are {allowed}.")
    check_value_types(cls, data, error, where)


def check_value_types(cls: type, data: Mapping[str, Any], error: type[Exception], where: str) -> None:
    """Raise ``error`` naming the first field of ``cls`` whose value in ``data`` does not match its annotation."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an annotation that cannot be resolved is not checked, never guessed
        return
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    for key, value in data.items():
        hint = hints.get(key, Any)
        if value is None and key in required:
            continue  # a required field left empty: the config's own check says it is missing
        if not accepts(hint, value):
            raise error(f"{where}: {key} wants {describe(hint)}, got {value!r} ({type(value).__name__})"
                        f"{_number_hint(hint, value)}.")


def accepts(hint: Any, value: Any) -> bool:
    """Whether ``value`` (as read from YAML/TOML/JSON, or given in Python) fits the annotation ``hint``.

    Lenient where the meaning is unambiguous: an int for a float, a list for a tuple, a mapping for a nested dataclass
    (its own builder checks it), a path object for text. Annotations it does not know are accepted.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(accepts(arg, value) for arg in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, (str, os.PathLike))
    if isinstance(hint, type) and issubclass(hint, PurePath):
        return isinstance(value, (str, os.PathLike))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return isinstance(value, (hint, Mapping))
    if origin in (list, tuple, set, frozenset):
        if not isinstance(value, (list, tuple, set, frozenset)):
            return False
        item = args[0] if args and (origin is not tuple or (len(args) == 2 and args[1] is Ellipsis)) else Any
        return all(accepts(item, v) for v in value)
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            return False
        return len(args) != 2 or all(accepts(args[1], v) for v in value.values())
    if hint in (list, tuple):
        return isinstance(value, (list, tuple))
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def describe(hint: Any) -> str:
    """The annotation in words a config author understands (``float | None`` -> ``a number (float) or null``)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(arg) for arg in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if hint in _WORDS:
        return _WORDS[hint]
    if isinstance(hint, type) and issubclass(hint, PurePath):
        return "a path (str)"
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple):
        return f"a list of {describe(args[0])}" if args else "a list"
    if origin in (dict, Mapping) or hint in (dict, Mapping) or (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
        return "a mapping of key: value"
    return getattr(hint, "__name__", str(hint))


def _number_hint(hint: Any, value: Any) -> str:
    """YAML 1.1 (PyYAML) reads ``1e-4`` without a decimal point as text: say so when a number was meant."""
    wants_number = accepts(hint, 1.0) or accepts(hint, 1)
    if not wants_number or not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return "; write it as a number without quotes (YAML reads 1e-4 as text: write 1.0e-4)"
