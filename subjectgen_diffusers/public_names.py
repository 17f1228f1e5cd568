"""What a subject records about where it came from: the name the user gave, never a private local path.

A subject folder is meant to be shared (``subjectgen push``), so ``subject_config.json`` and ``train_config.json``
record a base model or a photo folder as a Hub id when it is one, and otherwise as the local folder's own name
(``/home/alice/models/sd15`` becomes ``sd15``). :func:`local_paths_in` finds any absolute local path left in a JSON
value (a subject written by an older version), which ``push`` refuses to publish.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_WINDOWS_ABSOLUTE = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")


def is_local_absolute(text: str) -> bool:
    """An absolute (or home-relative) local path on POSIX or Windows, e.g. ``/home/u/x``, ``~/x``, ``C:\\x``."""
    return text.startswith(("/", "~")) or bool(_WINDOWS_ABSOLUTE.match(text))


def public_name(source: str | Path | None) -> str | None:
    """A Hub id as given; a local path (existing, absolute, or with a folder part) as its last component's name."""
    if source is None:
        return None
    text = str(source)
    if not text:
        return text
    path = Path(text).expanduser()
    looks_like_hub_id = bool(_HUB_ID.match(text)) and ".." not in text and text.count("/") <= 1
    if looks_like_hub_id and not path.exists():
        return text
    if not is_local_absolute(text) and not path.exists() and "/" not in text and "\\" not in text:
        return text  # a bare name (e.g. "unknown"): nothing private in it
    name = PureWindowsPath(text).name if _WINDOWS_ABSOLUTE.match(text) else PurePosixPath(text.rstrip("/")).name
    return name or path.resolve().name


def local_paths_in(value: Any, where: str = "") -> list[tuple[str, str]]:
    """Every ``(key path, string)`` in a JSON value whose string is an absolute local path."""
    found: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            found += local_paths_in(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += local_paths_in(item, f"{where}[{index}]")
    elif isinstance(value, str) and is_local_absolute(value):
        found.append((where, value))
    return found


def without_local_paths(value: Any) -> Any:
    """A copy of a JSON value with every absolute local path replaced by its :func:`public_name`."""
    if isinstance(value, dict):
        return {key: without_local_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_local_paths(item) for item in value]
    if isinstance(value, str) and is_local_absolute(value):
        return public_name(value)
    return value
