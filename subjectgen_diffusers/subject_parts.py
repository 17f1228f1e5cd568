"""A subject's parts, each with its own save (``state_dict``), load (``from_state_dict``), check, apply and remove.

- :class:`TokenTable`: the new token rows of one text encoder (SD 1.x: one table; SDXL: one for ``text_encoder`` and
  one for ``text_encoder_2``), stored as ``token_embeddings`` for the family's first encoder (the version-1 key) and
  ``token_embeddings.<encoder>`` for the others. Applying adds the subject's token strings to that encoder's tokenizer
  and rows (:mod:`.token_table`).
- :class:`AttentionDeltas`: Custom Diffusion weight deltas of UNet attention projections (and ``to_out`` bias
  deltas), applied by :class:`~subjectgen_diffusers.attention.SubjectAttnProcessor`.

Every part has ``state_dict(rank=None, factors=None)``, ``check(pipe, config)`` (reads the pipeline, raises a
:class:`SubjectgenError`, changes nothing), ``apply(pipe, config, scale, done)`` (changes it, appending its progress
to the list ``done``), ``remove(pipe, config, done)`` (undoes exactly that, also after a partial apply) and
``set_scale(pipe, config, done, scale)``, so the loader handles parts generically: check all, apply in order, on
failure remove what was applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .attention import attach_layer_delta, detach_layer_delta, set_layer_scale
from .errors import SubjectgenError
from .methods import token_strings
from .subject_tensors import TOKEN_KEY, WEIGHTS_NAME, LowRankDelta, SubjectFormatError, _split_layer_proj, low_rank_factors
from .token_table import add_tokens, remove_tokens, token_taken


def subject_token_strings(config) -> list[str]:
    """Every vocabulary entry a subject adds: each of its tokens in diffusers' multi-vector spelling."""
    return [name for token, count in config.tokens for name in token_strings(token, count)]


def table_key(encoder: str, first: bool) -> str:
    """The safetensors key of an encoder's token table: the version-1 key for the family's first encoder."""
    return TOKEN_KEY if first else f"{TOKEN_KEY}.{encoder}"


@dataclass
class TokenTable:
    """The token rows ``[total_vectors, width]`` a subject adds to one text encoder (``encoder``/``tokenizer``)."""

    encoder: str
    tokenizer: str
    vectors: torch.Tensor
    first: bool = True  # the family's first encoder (stored under the version-1 key)

    @property
    def key(self) -> str:
        return table_key(self.encoder, self.first)

    def state_dict(self, rank=None, factors=None) -> dict[str, torch.Tensor]:  # rank/factors concern deltas only
        return {self.key: self.vectors}

    @classmethod
    def from_state_dict(cls, slot, tensors: dict[str, torch.Tensor], first: bool) -> TokenTable:
        key = table_key(slot.encoder, first)
        if key not in tensors:
            raise SubjectFormatError(f"subject.safetensors has no `{key}` tensor (the token rows of {slot.encoder}).")
        return cls(slot.encoder, slot.tokenizer, tensors[key], first)

    def check(self, pipe, config) -> None:
        token, strings, base_model = config.token, subject_token_strings(config), config.base_model
        encoder, tokenizer = getattr(pipe, self.encoder, None), getattr(pipe, self.tokenizer, None)
        if encoder is None or tokenizer is None:
            raise SubjectgenError(f"subject `{token}` has token vectors for `{self.encoder}`, which this pipeline lacks.")
        width = encoder.get_input_embeddings().weight.shape[1]
        if self.vectors.shape[1] != width:
            where = "text encoder" if self.first else f"`{self.encoder}`"
            raise SubjectgenError(
                f"subject `{token}` has {self.vectors.shape[1]}-d token vectors but this pipeline's {where} is "
                f"{width}-d (base {base_model!r}); load it into the model family it was trained on.")
        if not torch.isfinite(self.vectors).all():
            raise SubjectgenError(f"subject `{token}` has NaN/inf token vectors; the file is corrupt or training diverged.")
        taken = [t for t in strings if token_taken(tokenizer, t)]
        if taken:
            raise SubjectgenError(
                f"token {taken[0]!r} is already in the tokenizer's vocabulary; pick a new word with token='<something>'.")

    def apply(self, pipe, config, scale: float, done: list) -> None:
        """Add the subject's token strings and rows (token vectors are not scaled)."""
        add_tokens(getattr(pipe, self.tokenizer), getattr(pipe, self.encoder), subject_token_strings(config),
                   self.vectors.detach())
        done.append(self.encoder)

    def remove(self, pipe, config, done: list) -> None:
        """Remove the token strings and their rows (also after a partial ``apply``: absent strings are skipped)."""
        remove_tokens(getattr(pipe, self.tokenizer), getattr(pipe, self.encoder), subject_token_strings(config))

    def set_scale(self, pipe, config, done: list, scale: float) -> None:
        """Token vectors are not scaled."""


def _attention_module(unet, layer: str):
    from diffusers.models.attention_processor import Attention

    try:
        module = unet.get_submodule(layer)
    except AttributeError:
        module = None
    if not isinstance(module, Attention):
        examples = [name.removesuffix(".processor") for name in list(unet.attn_processors)[:2]]
        raise SubjectgenError(
            f"the subject changes attention layer `{layer}`, which this UNet does not have (its layers look like "
            f"{examples}); the subject was trained on another base model: load it into that model."
        )
    return module


def _linear(module, proj: str, layer: str) -> torch.nn.Linear:
    """The projection's ``nn.Linear``: the layer itself, or the base layer a peft LoRA wraps (a loaded style LoRA)."""
    linear = module.to_out[0] if proj == "to_out.0" else getattr(module, proj)
    linear = getattr(linear, "base_layer", linear)
    if not isinstance(linear, torch.nn.Linear):
        raise SubjectgenError(
            f"`{layer}.{proj}` is a {type(linear).__name__}, not a Linear layer (or a LoRA around one); a subject's "
            "weight deltas apply to the linear projections of Stable Diffusion's attention."
        )
    return linear


def base_weight_lookup(unet):
    """``lookup(layer, "to_k" | "to_out.0.bias" ...)`` -> the UNet's tensor a delta is added to (errors name it)."""
    def lookup(layer: str, name: str) -> torch.Tensor:
        is_bias = name.endswith(".bias")
        proj = name.removesuffix(".bias")
        linear = _linear(_attention_module(unet, layer), proj, layer)
        if not is_bias:
            return linear.weight
        if linear.bias is None:
            raise SubjectgenError(f"`{layer}.{proj}` has no bias in this UNet, but the subject changes it.")
        return linear.bias

    return lookup


def _tensors(delta) -> tuple[torch.Tensor, ...]:
    return (delta.up, delta.down) if isinstance(delta, LowRankDelta) else (delta,)


@dataclass
class AttentionDeltas:
    """Custom Diffusion deltas: ``deltas[layer][proj]`` (dense or :class:`LowRankDelta`) and ``bias_deltas[layer]``."""

    deltas: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    bias_deltas: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        return sorted(set(self.deltas) | set(self.bias_deltas))

    def state_dict(self, rank: int | None = None,
                   factors: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
        """``{layer}.{proj}.delta`` (or ``.delta_up``/``.delta_down`` with ``rank`` or given ``factors``) and
        ``{layer}.to_out.0.bias_delta``."""
        tensors = {}
        for layer, projs in self.deltas.items():
            for proj, delta in projs.items():
                if factors is not None:
                    tensors[f"{layer}.{proj}.delta_up"], tensors[f"{layer}.{proj}.delta_down"] = factors[(layer, proj)]
                elif rank is None:
                    tensors[f"{layer}.{proj}.delta"] = delta
                else:
                    tensors[f"{layer}.{proj}.delta_up"], tensors[f"{layer}.{proj}.delta_down"] = \
                        low_rank_factors(delta, rank)
        for layer, bias in self.bias_deltas.items():
            tensors[f"{layer}.to_out.0.bias_delta"] = bias
        return tensors

    @classmethod
    def from_state_dict(cls, tensors: dict[str, torch.Tensor], low_rank: bool = False) -> AttentionDeltas:
        """Read the delta keys (every key given must be one); ``low_rank`` keeps factor pairs as :class:`LowRankDelta`."""
        deltas: dict[str, dict[str, torch.Tensor]] = {}
        bias_deltas: dict[str, torch.Tensor] = {}
        factors: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
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
        return cls(deltas, bias_deltas)

    def check(self, pipe, config) -> None:
        token, cross_attention_dim, base_model = config.token, config.cross_attention_dim, config.base_model
        unet_cross = pipe.unet.config.cross_attention_dim
        if self.deltas and cross_attention_dim is not None and cross_attention_dim != unet_cross:
            raise SubjectgenError(
                f"subject `{token}` was trained for cross-attention width {cross_attention_dim}, this UNet has "
                f"{unet_cross}; load it into the base model {base_model!r}.")
        lookup = base_weight_lookup(pipe.unet)
        for layer, projs in self.deltas.items():
            for proj, delta in projs.items():
                base = lookup(layer, proj)
                if tuple(delta.shape) != tuple(base.shape):
                    raise SubjectgenError(
                        f"subject `{token}`: delta for `{layer}.{proj}` has shape {tuple(delta.shape)}, the UNet's "
                        f"weight is {tuple(base.shape)}; the subject was trained on another base model.")
                if not all(torch.isfinite(t.sum(dtype=torch.float32)) for t in _tensors(delta)):  # NaN/inf propagate
                    raise SubjectgenError(f"subject `{token}`: delta `{layer}.{proj}` holds NaN/inf; the file is corrupt.")
        for layer, bias in self.bias_deltas.items():
            base = lookup(layer, "to_out.0.bias")
            if tuple(bias.shape) != tuple(base.shape):
                raise SubjectgenError(
                    f"subject `{token}`: bias delta of `{layer}` has shape {tuple(bias.shape)}, expected {tuple(base.shape)}.")

    def apply(self, pipe, config, scale: float, done: list) -> None:
        """Attach layer by layer, appending each to ``done`` (so a failure midway can be undone exactly)."""
        token = config.token
        for layer in self.layers:
            weights = {proj: delta if isinstance(delta, LowRankDelta) else delta.detach()
                       for proj, delta in self.deltas.get(layer, {}).items()}
            bias = self.bias_deltas.get(layer)
            attach_layer_delta(pipe.unet, layer, token, weights, None if bias is None else bias.detach(), scale)
            done.append(layer)

    def remove(self, pipe, config, done: list) -> None:
        for layer in done:
            detach_layer_delta(pipe.unet, layer, config.token)

    def set_scale(self, pipe, config, done: list, scale: float) -> None:
        for layer in done:
            set_layer_scale(pipe.unet, layer, config.token, scale)
