"""Atomic file writes: a temp file in the target folder, fsync, then ``os.replace``.

An interrupted job therefore never leaves a half-written file under a final name. The temp file (and a staging
folder from :func:`make_staging_dir`) is created with the ordinary mode, 0666 (0777 for a folder) less the user's
umask, exactly as ``open(path, "w")`` or ``mkdir`` would: ``tempfile.mkstemp``/``mkdtemp`` create owner-only
(0600/0700) entries, and a rename keeps that mode, which would leave every report, image and subject unreadable to
the user's group and to a web server.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any


_ATTEMPTS = 100


def _unique_name(folder: Path, prefix: str, suffix: str, create: Callable[[Path], None]) -> Path:
    """Create (with ``create``, which must fail with FileExistsError when taken) a fresh random name in ``folder``."""
    for _ in range(_ATTEMPTS):
        candidate = folder / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            create(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"no free temporary name {prefix}*{suffix} in {folder}")


def _create_file(path: Path) -> None:
    # O_EXCL: never open someone else's file; mode 0o666 is reduced by the umask as for any new file.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def make_staging_dir(parent: str | Path, prefix: str) -> Path:
    """A new empty folder ``parent/<prefix><random>`` with the umask's ordinary mode, to fill and then rename."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    return _unique_name(parent, prefix, "", lambda p: os.mkdir(p, 0o777))


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` only once it is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _unique_name(path.parent, f".{path.name}.", ".tmp", _create_file)
    try:
        mode = stat.S_IMODE(tmp_path.stat().st_mode)  # what the kernel gave 0o666 under the umask
        write(tmp_path)
        os.chmod(tmp_path, mode)  # a writer may replace the file with its own (safetensors writes an 0600 one)
        with open(tmp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def atomic_save_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    contiguous = {k: v.detach().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(contiguous, str(tmp), metadata=metadata))


def atomic_save_image(path: str | Path, image, **save_kwargs) -> Path:
    """Save a PIL image atomically; the format is taken from ``path``'s suffix."""
    path = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}.get(path.suffix.lower(), "PNG")
    return atomic_write(path, lambda tmp: image.save(tmp, format=fmt, **save_kwargs))
