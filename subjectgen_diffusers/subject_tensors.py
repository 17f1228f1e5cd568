"""The subject file's lowest layer: its file and tensor names, the format error, and low-rank deltas.

Both the subject format (:mod:`.subject_format`) and its parts (:mod:`.subject_parts`, :mod:`.attention`) build on
these, so neither has to import the other to name a key or a factored delta.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import SubjectgenError
from .methods import PROJECTIONS

CONFIG_NAME = "subject_config.json"
WEIGHTS_NAME = "subject.safetensors"
TOKEN_KEY = "token_embeddings"


@dataclass(frozen=True)
class LowRankDelta:
    """A delta kept as its stored factors, ``ΔW = up @ down`` (``up: [out, r]``, ``down: [r, in]``).

    Only :meth:`Subject.load` with ``low_rank=True`` (what ``load_subject`` uses) produces these: the attention
    processor then computes ``up (down x)`` and never builds the dense ``[out, in]`` matrix, so a compressed subject
    loads in milliseconds. Everything else reads dense tensors.
    """

    up: torch.Tensor
    down: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.up.shape[0], self.down.shape[1]))

    def dense(self) -> torch.Tensor:
        return self.up.float() @ self.down.float()


class SubjectFormatError(SubjectgenError):
    """A subject file or config is malformed or does not fit the pipeline it is loaded into."""


def _split_layer_proj(stem: str, key: str) -> tuple[str, str]:
    for proj in PROJECTIONS:
        if stem.endswith("." + proj):
            return stem[: -len(proj) - 1], proj
    raise SubjectFormatError(f"tensor `{key}` does not name a projection among {PROJECTIONS}.")


def low_rank_factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` factors (Eckart–Young, truncated SVD): ``delta ≈ up @ down``."""
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    rank = min(rank, s.numel())
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).contiguous(), (root[:, None] * vh[:rank]).contiguous()
