"""A base model's component configs (``unet/config.json``, ``vae/config.json``, ...) read without loading weights.

A local diffusers folder is read directly; a Hub id through ``huggingface_hub.hf_hub_download`` (the cache,
revisions and ``HF_HUB_OFFLINE`` behave as for diffusers). Used to choose a training size (the UNet's
``sample_size`` times the VAE's down-scaling factor) and to check a subject against a base before anything loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import SubjectgenError


def looks_like_a_path(name: str | Path) -> bool:
    """A name no Hub id can be (``owner/name`` has no leading ``/``, ``.``, ``~`` and at most one ``/``): a local
    path, so a missing one is named as a missing folder, not sent to the Hub."""
    text = str(name)
    return isinstance(name, Path) or text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text


def read_base_json(base: str | Path, filename: str, missing: str, revision: str | None = None) -> dict[str, Any]:
    """``<base>/<filename>`` (a local folder or a Hub id) as a dict; ``missing`` says what a local folder without
    the file is not. Any failure is a :class:`SubjectgenError` saying what to do."""
    folder = Path(base).expanduser()
    if folder.is_dir():
        path = folder / filename
        if not path.is_file():
            raise SubjectgenError(f"{folder} has no {filename}: {missing}")
    elif looks_like_a_path(base):
        raise SubjectgenError(f"{base} does not exist: pass a diffusers model folder or a Hub id (owner/name).")
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        subfolder, _, name = filename.rpartition("/")
        try:
            path = Path(hf_hub_download(str(base), name, subfolder=subfolder or None, revision=revision,
                                        library_name="subjectgen-diffusers"))
        except LocalEntryNotFoundError as error:
            raise SubjectgenError(f"{base!r} is neither a local folder nor in the Hugging Face cache, and the Hub "
                                  f"cannot be reached (offline?). Check the name, or go online once.") from error
        except (HfHubHTTPError, ValueError) as error:
            raise SubjectgenError(f"could not read {filename} of {base!r} from the Hub: {error}") from error
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SubjectgenError(f"{path} is not readable JSON ({error}); re-download the base model.") from error


def read_component_config(base: str | Path, component: str, revision: str | None = None) -> dict[str, Any]:
    """``<base>/<component>/config.json`` as a dict; a :class:`SubjectgenError` saying what to do when unreadable."""
    return read_base_json(base, f"{component}/config.json", "it is not a diffusers Stable Diffusion folder "
                          "(model_index.json with unet/, vae/, text_encoder/ ...).", revision)


def read_model_index(base: str | Path, revision: str | None = None) -> dict[str, Any]:
    """``model_index.json`` of a diffusers folder or Hub id, without loading weights."""
    return read_base_json(base, "model_index.json", "it is not a diffusers pipeline folder.", revision)


def native_resolution(base: str | Path, revision: str | None = None) -> int:
    """The image side the base model was trained at: UNet ``sample_size`` x 2^(VAE blocks - 1) (SD 1.5: 64 x 8)."""
    unet = read_component_config(base, "unet", revision)
    vae = read_component_config(base, "vae", revision)
    size = unet.get("sample_size")
    if isinstance(size, (list, tuple)):
        size = size[0]
    blocks = vae.get("block_out_channels") or [0]
    return int(size) * 2 ** (len(blocks) - 1)
