"""Each registered method's own config fields (``Method.options``, a dataclass per method) as they appear in a flat
training config: which methods own a field, and moving a flat mapping's method keys into the chosen method's
``options`` (refusing another method's field unless it is unset)."""

from __future__ import annotations

import dataclasses
from typing import Any

from subjectgen_training.methods import get_method, method_names


def field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def is_unset(value: Any, default: Any) -> bool:
    """None, 0, "", off, or a switch at its default: what an older recorded config writes for a field it never used."""
    return value is None or value is False or (not isinstance(value, bool) and value in (0, "")) or \
        (isinstance(value, bool) and value == default)


def method_fields() -> dict[str, tuple[list[str], Any]]:
    """``{field: ([methods that have it], its default)}`` over the registered methods' own config dataclasses."""
    from subjectgen_training.methods import REGISTRY

    out: dict[str, tuple[list[str], Any]] = {}
    for name, method in REGISTRY.items():
        for spec in dataclasses.fields(method.options):
            default = spec.default if spec.default is not dataclasses.MISSING else None
            out.setdefault(spec.name, ([], default))[0].append(name)
    return out


def method_keys_to_options(data: dict[str, Any], shared: set[str], error: type[Exception]) -> dict[str, Any]:
    """Move the top-level keys of ``data`` that are methods' own fields (not in ``shared``) into ``options`` (the
    chosen method's). A field of another method is refused with ``error`` unless it is unset: a recorded
    ``train_config.json`` of an older version lists every method's fields."""
    owners = method_fields()
    method = data.get("method")
    chosen = field_names(get_method(method).options) if method in method_names() else set()
    options = dict(data.pop("options", None) or {})
    for key in [k for k in data if k not in shared and k in owners]:
        value = data.pop(key)
        if key in chosen:
            options[key] = value
        elif not is_unset(value, owners[key][1]):
            methods = owners[key][0]
            raise error(f"{key} is a field of method {' / '.join(methods)}, not of {method}: drop {key} or use "
                        f"--method {methods[0]}.")
    data["options"] = options
    return data
