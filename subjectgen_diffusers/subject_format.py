"""The subject file format: ``subject_config.json`` + ``subject.safetensors`` (safetensors only).

Tensors
- ``token_embeddings``: ``[num_vectors, text_hidden_size]``, the new token's vectors in prompt order. A subject that
  holds several people (``subjectgen merge``, joint training) lists its further tokens in ``extra_tokens``
  (``{token: num_vectors}``, in order); their rows follow the first token's, so the tensor is
  ``[total_vectors, text_hidden_size]``.
- ``{layer}.{proj}.delta``: a Custom Diffusion weight delta ``ΔW = W_trained - W_base`` for one projection
  (``proj`` in ``to_q``, ``to_k``, ``to_v``, ``to_out.0``) of the attention module ``layer`` of the UNet.
- ``{layer}.{proj}.delta_up`` / ``.delta_down``: the same delta as low-rank factors, ``ΔW = up @ down``.
- ``{layer}.to_out.0.bias_delta``: the delta of the output projection's bias (scope ``kv+q+out``).

Deltas rather than trained weights keep a subject small, make ``scale`` meaningful and let subjects compose.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .atomic_io import atomic_save_safetensors, atomic_write_json
from .errors import SubjectgenError
from .methods import CD_SCOPES, METHODS, PROJECTIONS, method_info  # noqa: F401 - re-exported for old imports
from .strict_config import check_known_keys

FORMAT_VERSION = 1
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


@dataclass
class SubjectConfig:
    """What a subject is and what it depends on; stored as ``subject_config.json``."""

    method: str
    token: str
    num_vectors: int
    text_hidden_size: int
    base_model: str = "unknown"
    cross_attention_dim: int | None = None
    layers: list[str] = field(default_factory=list)
    cd_scope: str | None = None
    delta_rank: int | None = None
    dtype: str = "float32"
    format_version: int = FORMAT_VERSION
    training: dict[str, Any] = field(default_factory=dict)
    extra_tokens: dict[str, int] = field(default_factory=dict)  # further people in the same subject: token -> vectors

    def __post_init__(self) -> None:
        if self.format_version > FORMAT_VERSION:
            raise SubjectFormatError(
                f"subject format version {self.format_version} is newer than this library supports ({FORMAT_VERSION}); "
                "upgrade subjectgen-diffusers."
            )
        if self.method not in METHODS:
            raise SubjectFormatError(f"method must be one of {sorted(METHODS)}, got {self.method!r}.")
        if not self.token or any(c.isspace() for c in self.token):
            raise SubjectFormatError(f"token must be a non-empty string without spaces, got {self.token!r}.")
        if self.num_vectors < 1:
            raise SubjectFormatError(f"num_vectors must be >= 1, got {self.num_vectors}.")
        for token, count in self.extra_tokens.items():
            if not token or any(c.isspace() for c in token) or token == self.token:
                raise SubjectFormatError(f"extra_tokens: {token!r} must be a new word without spaces, unlike `token`.")
            if not isinstance(count, int) or count < 1:
                raise SubjectFormatError(f"extra_tokens: {token!r} needs a vector count >= 1, got {count!r}.")
        if self.has_deltas:
            if self.cd_scope not in CD_SCOPES:
                raise SubjectFormatError(f"cd_scope must be one of {sorted(CD_SCOPES)}, got {self.cd_scope!r}.")
            if not self.layers or self.cross_attention_dim is None:
                raise SubjectFormatError("a Custom Diffusion subject needs `layers` and `cross_attention_dim`.")

    @property
    def has_deltas(self) -> bool:
        return method_info(self.method).has_deltas

    @property
    def tokens(self) -> list[tuple[str, int]]:
        """Every ``(token, num_vectors)`` of the subject in row order: ``token`` first, then ``extra_tokens``."""
        return [(self.token, self.num_vectors), *self.extra_tokens.items()]

    @property
    def total_vectors(self) -> int:
        return sum(count for _, count in self.tokens)

    def token_rows(self) -> dict[str, slice]:
        """Which rows of ``token_embeddings`` belong to each token."""
        rows, start = {}, 0
        for token, count in self.tokens:
            rows[token] = slice(start, start + count)
            start += count
        return rows

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SubjectConfig:
        check_known_keys(cls, data, SubjectFormatError, CONFIG_NAME)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Subject:
    """A subject in memory: its config, token vectors and per-layer Custom Diffusion deltas."""

    config: SubjectConfig
    token_embeddings: torch.Tensor
    deltas: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    bias_deltas: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = tuple(self.token_embeddings.shape)
        expected = (self.config.total_vectors, self.config.text_hidden_size)
        if shape != expected:
            raise SubjectFormatError(f"token_embeddings has shape {shape}, the config says {expected}.")
        if set(self.deltas) != set(self.config.layers if self.config.has_deltas else []):
            raise SubjectFormatError("the delta layers do not match the `layers` listed in the config.")

    # -- tensors <-> files -------------------------------------------------------------------------------------
    def state_dict(
        self, rank: int | None = None, factors: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] | None = None
    ) -> dict[str, torch.Tensor]:
        """Flatten to safetensors keys; ``rank`` stores each delta as truncated-SVD factors, ``factors`` as the given
        ``(up, down)`` pair per ``(layer, proj)`` (ranks may differ per delta, see :mod:`.compress`)."""
        tensors = {TOKEN_KEY: self.token_embeddings}
        for layer, projs in self.deltas.items():
            for proj, delta in projs.items():
                if factors is not None:
                    tensors[f"{layer}.{proj}.delta_up"], tensors[f"{layer}.{proj}.delta_down"] = factors[(layer, proj)]
                elif rank is None:
                    tensors[f"{layer}.{proj}.delta"] = delta
                else:
                    up, down = low_rank_factors(delta, rank)
                    tensors[f"{layer}.{proj}.delta_up"] = up
                    tensors[f"{layer}.{proj}.delta_down"] = down
        for layer, bias in self.bias_deltas.items():
            tensors[f"{layer}.to_out.0.bias_delta"] = bias
        return tensors

    @classmethod
    def from_state_dict(cls, config: SubjectConfig, tensors: dict[str, torch.Tensor], low_rank: bool = False) -> Subject:
        """Build a subject from its safetensors tensors; ``low_rank`` keeps factor pairs as :class:`LowRankDelta`."""
        if TOKEN_KEY not in tensors:
            raise SubjectFormatError(f"{WEIGHTS_NAME} has no `{TOKEN_KEY}` tensor.")
        deltas: dict[str, dict[str, torch.Tensor]] = {}
        bias_deltas: dict[str, torch.Tensor] = {}
        factors: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            if key == TOKEN_KEY:
                continue
            if key.endswith(".to_out.0.bias_delta"):
                bias_deltas[key[: -len(".to_out.0.bias_delta")]] = tensor
                continue
            stem, _, kind = key.rpartition(".")
            layer, proj = _split_layer_proj(stem, key)
            if kind == "delta":
                deltas.setdefault(layer, {})[proj] = tensor
            elif kind in ("delta_up", "delta_down"):
                factors.setdefault((layer, proj), {})[kind] = tensor
            else:
                raise SubjectFormatError(f"unexpected tensor `{key}` in {WEIGHTS_NAME}.")
        for (layer, proj), pair in factors.items():
            if set(pair) != {"delta_up", "delta_down"}:
                raise SubjectFormatError(f"{layer}.{proj}: low-rank delta needs both delta_up and delta_down.")
            if tuple(pair["delta_up"].shape[1:]) != tuple(pair["delta_down"].shape[:1]):
                raise SubjectFormatError(f"{layer}.{proj}: delta_up and delta_down have mismatched ranks.")
            factored = LowRankDelta(pair["delta_up"], pair["delta_down"])
            deltas.setdefault(layer, {})[proj] = factored if low_rank else factored.dense()
        return cls(config, tensors[TOKEN_KEY], deltas, bias_deltas)

    def save(
        self,
        folder: str | Path,
        rank: int | None = None,
        dtype: torch.dtype | None = None,
        factors: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> Path:
        """Write ``subject_config.json`` and ``subject.safetensors`` atomically into ``folder``.

        ``delta_rank`` in the config records the largest rank stored (``None``: dense deltas)."""
        folder = Path(folder)
        tensors = self.state_dict(rank, factors)
        if factors is not None:
            rank = max(up.shape[1] for up, _ in factors.values())
        if dtype is not None:
            tensors = {k: v.to(dtype) for k, v in tensors.items()}
        stored_dtype = str(next(iter(tensors.values())).dtype).replace("torch.", "")
        config = dataclasses.replace(self.config, delta_rank=rank, dtype=stored_dtype)
        atomic_save_safetensors(folder / WEIGHTS_NAME, tensors, metadata={"format": "pt", "subjectgen": "1"})
        atomic_write_json(folder / CONFIG_NAME, config.to_dict())
        return folder

    @classmethod
    def load(cls, folder: str | Path, low_rank: bool = False) -> Subject:
        from safetensors.torch import load_file

        folder = Path(folder)
        config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise SubjectFormatError(f"{path} is missing: a subject folder holds {CONFIG_NAME} and {WEIGHTS_NAME}.")
        try:
            config = SubjectConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as error:
            raise SubjectFormatError(f"{config_path} is not valid JSON: {error}") from error
        return cls.from_state_dict(config, load_file(str(weights_path)), low_rank=low_rank)


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
