"""The subject file format: ``subject_config.json`` + ``subject.safetensors`` (safetensors only).

A subject records its model family (``family``: ``sd1`` for SD 1.x/2.x, ``sdxl``; see
:mod:`subjectgen_diffusers.families`) and is made of parts (:mod:`.subject_parts`): one token table per text encoder
of the family and the attention deltas. Format version 2 added ``family`` and ``extra_encoders``; a version-1 file
(no such keys) is an ``sd1`` subject and loads unchanged.

Tensors
- ``token_embeddings``: ``[num_vectors, text_hidden_size]``, the new token's vectors in prompt order, for the family's
  first text encoder (``text_encoder``).
- ``token_embeddings.<encoder>``: the same token's vectors for each further encoder of the family, ``[num_vectors,
  extra_encoders[encoder]]`` (SDXL: ``token_embeddings.text_encoder_2``, 1280 wide). A subject that
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
from .subject_parts import AttentionDeltas, TokenTable
from .subject_tensors import (  # noqa: F401 - the format's names, re-exported for old imports
    CONFIG_NAME,
    TOKEN_KEY,
    WEIGHTS_NAME,
    LowRankDelta,
    SubjectFormatError,
    _split_layer_proj,
    low_rank_factors,
)

FORMAT_VERSION = 2  # 2: `family` and `extra_encoders` (token tables of further text encoders)


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
    family: str = "sd1"  # the model family (subjectgen_diffusers.families); version-1 files are sd1
    extra_encoders: dict[str, int] = field(default_factory=dict)  # the family's further text encoders -> token width

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
        encoders = [slot.encoder for slot in self.model_family.text_encoders]
        if list(self.extra_encoders) != encoders[1:]:
            raise SubjectFormatError(
                f"a `{self.family}` subject has token tables for {encoders}: `extra_encoders` must list the widths of "
                f"{encoders[1:]}, got {sorted(self.extra_encoders)}.")
        if self.has_deltas:
            if self.cd_scope not in CD_SCOPES:
                raise SubjectFormatError(f"cd_scope must be one of {sorted(CD_SCOPES)}, got {self.cd_scope!r}.")
            if not self.layers or self.cross_attention_dim is None:
                raise SubjectFormatError("a Custom Diffusion subject needs `layers` and `cross_attention_dim`.")

    @property
    def has_deltas(self) -> bool:
        return method_info(self.method).has_deltas

    @property
    def model_family(self):
        from .families import get_family

        try:
            return get_family(self.family)
        except SubjectgenError as error:
            raise SubjectFormatError(f"{CONFIG_NAME}: {error}") from None

    def table_widths(self) -> dict[str, int]:
        """Every text encoder's token width, in the family's order: ``{"text_encoder": 768, "text_encoder_2": 1280}``."""
        first = self.model_family.text_encoders[0].encoder
        return {first: self.text_hidden_size, **self.extra_encoders}

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
    """A subject in memory: its config, token vectors per text encoder and per-layer Custom Diffusion deltas.

    ``token_embeddings`` is the family's first encoder's table (as in version 1); ``extra_tables`` holds the others
    (SDXL: ``{"text_encoder_2": T[n, 1280]}``); :attr:`token_tables` gives all of them by encoder."""

    config: SubjectConfig
    token_embeddings: torch.Tensor
    deltas: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    bias_deltas: dict[str, torch.Tensor] = field(default_factory=dict)
    extra_tables: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        widths = self.config.table_widths()
        tables = self.token_tables
        if list(tables) != list(widths):
            raise SubjectFormatError(f"a `{self.config.family}` subject needs token tables for {list(widths)}, "
                                     f"got {list(tables)}.")
        for encoder, table in tables.items():
            shape, expected = tuple(table.shape), (self.config.total_vectors, widths[encoder])
            if shape != expected:
                name = "token_embeddings" if encoder == next(iter(widths)) else f"the token table of {encoder}"
                raise SubjectFormatError(f"{name} has shape {shape}, the config says {expected}.")
        if set(self.deltas) != set(self.config.layers if self.config.has_deltas else []):
            raise SubjectFormatError("the delta layers do not match the `layers` listed in the config.")

    @property
    def token_tables(self) -> dict[str, torch.Tensor]:
        first = self.config.model_family.text_encoders[0].encoder
        return {first: self.token_embeddings, **self.extra_tables}

    def parts(self) -> list:
        """The subject's parts (:mod:`.subject_parts`): a token table per text encoder, then the attention deltas."""
        tables = self.token_tables
        parts: list = [TokenTable(slot.encoder, slot.tokenizer, tables[slot.encoder], index == 0)
                       for index, slot in enumerate(self.config.model_family.text_encoders)]
        if self.deltas or self.bias_deltas:
            parts.append(AttentionDeltas(self.deltas, self.bias_deltas))
        return parts

    # -- tensors <-> files -------------------------------------------------------------------------------------
    def state_dict(
        self, rank: int | None = None, factors: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] | None = None
    ) -> dict[str, torch.Tensor]:
        """Flatten to safetensors keys; ``rank`` stores each delta as truncated-SVD factors, ``factors`` as the given
        ``(up, down)`` pair per ``(layer, proj)`` (ranks may differ per delta, see :mod:`.compress`)."""
        tensors = {}
        for part in self.parts():
            tensors.update(part.state_dict(rank, factors))
        return tensors

    @classmethod
    def from_state_dict(cls, config: SubjectConfig, tensors: dict[str, torch.Tensor], low_rank: bool = False) -> Subject:
        """Build a subject from its safetensors tensors; ``low_rank`` keeps factor pairs as :class:`LowRankDelta`."""
        tables = [TokenTable.from_state_dict(slot, tensors, index == 0)
                  for index, slot in enumerate(config.model_family.text_encoders)]
        rest = {key: tensor for key, tensor in tensors.items() if key not in {table.key for table in tables}}
        attention = AttentionDeltas.from_state_dict(rest, low_rank)
        return cls(config, tables[0].vectors, attention.deltas, attention.bias_deltas,
                   {table.encoder: table.vectors for table in tables[1:]})

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
        config = dataclasses.replace(self.config, delta_rank=rank, dtype=stored_dtype, format_version=FORMAT_VERSION)
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
