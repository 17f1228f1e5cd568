"""Reading a config file the user wrote: YAML (``.yaml``/``.yml``, the default), TOML (``.toml``) or JSON (``.json``)
into a plain mapping, with one clear error for a missing, unparsable or non-mapping file. What the mapping may hold
is the typed config's business (unknown keys are refused there)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_mapping(path: str | Path, error: type[Exception]) -> dict[str, Any]:
    """The raw mapping of ``path``; a file that is missing, unparsable or not a mapping raises ``error``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"config file {path} does not exist.")
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
    except Exception as parse_error:  # noqa: BLE001 - any parse error is the user's file
        raise error(f"cannot parse config file {path}: {parse_error}") from parse_error
    if not isinstance(data, dict):
        raise error(f"config file {path} must hold a mapping of field: value.")
    return data
