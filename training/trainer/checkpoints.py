"""Resumable training checkpoints: the trainable tensors (safetensors), the optimizer state and the step.

Per-step randomness is derived from ``(seed, step, process)`` (see ``trainer.step_generator``), so these three are
the whole state: a run killed and resumed from a checkpoint ends like an uninterrupted one. A checkpoint folder
is written under a temporary name and renamed when complete; only the last ``keep`` are kept.

Checkpoints live beside the subject, in ``<out>.checkpoints/`` (for ``subjects/alice``: ``subjects/alice.checkpoints``),
never inside it: the subject folder holds only what is shared (``subjectgen push``), while ``optimizer.pt`` is
hundreds of MB on SD 1.5. The trainer drops the folder once the subject is written, unless ``keep_checkpoints``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from subjectgen_diffusers.atomic_io import make_staging_dir

PARAMS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"


CHECKPOINTS_SUFFIX = ".checkpoints"


def checkpoint_dir(out: Path) -> Path:
    """``<out>.checkpoints``: beside the subject folder ``out``, not inside it."""
    out = Path(out)
    if not out.name:  # "." or "/"
        out = out.resolve()
    return out.with_name(out.name + CHECKPOINTS_SUFFIX)


def drop_checkpoints(out: Path) -> None:
    """Delete the checkpoints of ``out`` (after a finished run)."""
    shutil.rmtree(checkpoint_dir(out), ignore_errors=True)


def check_stopped_run(out: Path, *, resume: bool, restart: bool) -> None:
    """A run that starts without ``resume`` over the checkpoints of a stopped run neither continues it silently nor
    trains from scratch over it: ``restart`` deletes them, otherwise the run refuses and says how to choose."""
    from subjectgen_diffusers.errors import SubjectgenError

    found = list_checkpoints(out)
    if resume or not found:
        return
    if restart:
        drop_checkpoints(out)
        return
    raise SubjectgenError(f"{checkpoint_dir(out)} holds a stopped run's checkpoints (latest: step "
                          f"{checkpoint_step(found[-1])}); run the same command with --resume to continue from there, "
                          "or with --restart to start again from step 0 (deleting them).")


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[1])


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints in step order (a folder counts once its ``state.json`` exists)."""
    folder = checkpoint_dir(out)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(out: Path, step: int, params: dict[str, torch.Tensor], optimizer, keep: int, extra: dict | None = None) -> Path:
    from safetensors.torch import save_file

    folder = checkpoint_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:07d}"
    tmp = make_staging_dir(folder, f".step-{step:07d}.")
    try:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in params.items()}, str(tmp / PARAMS_FILE))
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **(extra or {})}) + "\n", encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(folder: Path, params: dict[str, torch.Tensor], optimizer) -> int:
    """Copy the saved tensors into ``params`` and the optimizer state into ``optimizer``; return the step."""
    from safetensors.torch import load_file

    saved = load_file(str(folder / PARAMS_FILE))
    if set(saved) != set(params):
        raise ValueError(f"checkpoint {folder} holds {sorted(saved)}, this run trains {sorted(params)}")
    with torch.no_grad():
        for name, tensor in params.items():
            tensor.copy_(saved[name].to(tensor.device, tensor.dtype))
    optimizer.load_state_dict(torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=True))
    return int(json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))["step"])
