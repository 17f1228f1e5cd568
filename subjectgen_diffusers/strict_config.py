"""Typed configs fail loudly: a mapping with a key that no dataclass field names is an error, never ignored."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


def check_known_keys(cls: type, data: Any, error: type[Exception], where: str) -> None:
    """Raise ``error`` unless ``data`` is a mapping whose keys are all fields of dataclass ``cls``.

    The message names the offending keys and lists the allowed ones, e.g.
    ``"training config: unknown keys ['stepz']; allowed keys are ['base', ...]."``.
    """
    if not isinstance(data, Mapping):
        raise error(f"{where} must be a mapping of key: value, got {type(data).__name__}.")
    allowed = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise error(f"{where}: unknown keys {unknown}; allowed keys are {allowed}.")
