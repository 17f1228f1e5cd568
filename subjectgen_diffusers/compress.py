"""Low-rank compression of Custom Diffusion weight deltas (truncated SVD, Eckart–Young).

A delta ``ΔW`` (``m x n``) is stored as ``up @ down`` with ``up = U_r √S_r`` and ``down = √S_r V_rᵀ``: the best rank-r
approximation in the Frobenius norm. The rank is either fixed (``rank=R``) or chosen per delta as the smallest one
whose squared singular values keep a fraction ``energy`` of the total (``Σ_{i<r} s_i² / Σ s_i² >= E``; Kumari et al.'s
``compress.py`` for Custom Diffusion uses the same spectrum criterion on plain singular values). The relative error
``‖ΔW - up @ down‖_F / ‖ΔW‖_F`` is reported for every delta.

:func:`compress_subject` writes a subject whose deltas are stored as ``delta_up`` / ``delta_down`` factors (the subject
format reads them, see :mod:`subjectgen_diffusers.subject_format`); the LoRA export
(:mod:`subjectgen_diffusers.lora_export`) uses the same factorisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic_io import atomic_write_json
from .errors import SubjectgenError
from .subject_format import Subject

COMPRESS_REPORT = "compress.json"


@dataclass(frozen=True)
class RankChoice:
    """How to pick each delta's rank: a fixed ``rank``, a spectrum ``energy``, or neither (exact: full rank)."""

    rank: int | None = None
    energy: float | None = None

    def __post_init__(self) -> None:
        if self.rank is not None and self.energy is not None:
            raise SubjectgenError("give either a rank (--rank) or an energy (--energy), not both.")
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1):
            raise SubjectgenError(f"--rank must be a whole number >= 1, got {self.rank!r}.")
        if self.energy is not None and (math.isnan(float(self.energy)) or not 0.0 < float(self.energy) <= 1.0):
            raise SubjectgenError(
                f"--energy must lie in (0, 1] (the fraction of squared singular values to keep), got {self.energy!r}."
            )

    @property
    def exact(self) -> bool:
        return self.rank is None and self.energy is None


@dataclass
class Factored:
    """One delta as ``up @ down`` and how well that reproduces it."""

    up: torch.Tensor
    down: torch.Tensor
    rank: int
    relative_error: float


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest ``r`` with ``Σ_{i<r} s_i² >= energy · Σ s_i²`` (at least 1)."""
    squared = singular_values.double() ** 2
    total = float(squared.sum())
    if total == 0.0:
        return 1
    kept = torch.cumsum(squared, 0) / total
    # a tiny tolerance so that energy=1.0 is not defeated by rounding in the cumulative sum
    return max(1, int(torch.searchsorted(kept, torch.tensor(energy - 1e-12, dtype=kept.dtype)).item()) + 1)


def check_rank_fits(deltas: dict[str, dict[str, torch.Tensor]], rank: int) -> None:
    """Raise if ``rank`` exceeds ``min(m, n)`` of any delta (a rank-R factorisation of it does not exist)."""
    limits = {f"{layer}.{proj}": min(delta.shape) for layer, projs in deltas.items() for proj, delta in projs.items()}
    if not limits:
        return
    name, limit = min(limits.items(), key=lambda item: item[1])
    if rank > limit:
        raise SubjectgenError(
            f"--rank {rank} is larger than the delta `{name}` allows (its shape has min(m, n) = {limit}); "
            f"choose --rank {limit} or less, or --energy E to pick each delta's rank from its spectrum."
        )


def factorize(delta: torch.Tensor, choice: RankChoice) -> Factored:
    """Truncated SVD of one delta in float64 (then float32 factors), with the relative Frobenius error."""
    matrix = delta.detach().double()
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    if choice.rank is not None:
        if choice.rank > s.numel():
            raise SubjectgenError(f"--rank {choice.rank} is larger than this delta allows (min(m, n) = {s.numel()}).")
        rank = choice.rank
    elif choice.energy is not None:
        rank = rank_for_energy(s, float(choice.energy))
    else:
        rank = s.numel()
    root = s[:rank].sqrt()
    up, down = (u[:, :rank] * root).float().contiguous(), (root[:, None] * vh[:rank]).float().contiguous()
    norm = float(torch.linalg.matrix_norm(matrix))
    error = float(torch.linalg.matrix_norm(matrix - up.double() @ down.double())) / norm if norm > 0 else 0.0
    return Factored(up, down, rank, error)


def factorize_subject(subject: Subject, choice: RankChoice) -> dict[tuple[str, str], Factored]:
    """Factor every delta of ``subject``; checks a fixed rank against every delta first."""
    if not subject.deltas:
        raise SubjectgenError(
            f"subject `{subject.config.token}` ({subject.config.method}) has no weight deltas, only token vectors: "
            "there is nothing to compress."
        )
    if choice.rank is not None:
        check_rank_fits(subject.deltas, choice.rank)
    return {
        (layer, proj): factorize(delta, choice)
        for layer, projs in sorted(subject.deltas.items())
        for proj, delta in sorted(projs.items())
    }


def check_new_folder(out: Path) -> None:
    """Refuse to write into a folder that already holds files (nothing is ever overwritten silently)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SubjectgenError(f"{out} already exists; choose a new output folder or remove it first.")


def save_compressed(
    subject: Subject,
    folder: str | Path,
    *,
    rank: int | None = None,
    energy: float | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``subject`` into ``folder`` (which may hold other files, e.g. a training run's) with rank-``rank`` (or
    ``energy``) factors, plus ``compress.json``. This is what ``train --save-rank R`` calls on the trained subject:
    ``save_compressed(trainer.build_subject(), out, rank=R, dtype=dtype)``."""
    choice = RankChoice(rank, energy)
    if choice.exact:
        raise SubjectgenError("compress needs --rank R or --energy E.")
    folder = Path(folder)
    if dtype is None:
        dtype = getattr(torch, subject.config.dtype, torch.float32)
    factors = factorize_subject(subject, choice)
    subject.save(folder, factors={key: (f.up, f.down) for key, f in factors.items()}, dtype=dtype)
    report = {
        "rank": rank,
        "energy": energy,
        "dtype": str(dtype).removeprefix("torch."),
        "max_relative_error": max(f.relative_error for f in factors.values()),
        "layers": {f"{layer}.{proj}": {"rank": f.rank, "relative_error": f.relative_error}
                   for (layer, proj), f in factors.items()},
    }
    atomic_write_json(folder / COMPRESS_REPORT, report)
    return folder


def compress_subject(
    src: Subject | str | Path,
    out: str | Path,
    *,
    rank: int | None = None,
    energy: float | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``src`` to the new folder ``out`` with every delta as rank-``rank`` (or ``energy``) factors; return ``out``.

    ``dtype`` (default: the source's stored dtype) is the dtype of the written tensors. ``compress.json`` beside the
    subject lists each delta's rank and relative Frobenius error.
    """
    RankChoice(rank, energy)  # argument errors before any file is touched
    out = Path(out)
    check_new_folder(out)
    if not isinstance(src, Subject):
        from .subject_check import check_subject_files

        check_subject_files(src)  # a damaged or truncated file is said as such, not as a safetensors error
    subject = src if isinstance(src, Subject) else Subject.load(src)
    return save_compressed(subject, out, rank=rank, energy=energy, dtype=dtype)
