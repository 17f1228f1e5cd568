"""Attention processor that runs a UNet attention layer with Custom Diffusion weight deltas.

Custom Diffusion (Kumari et al., "Multi-Concept Customization of Text-to-Image Diffusion", CVPR 2023, Sec. 3.1)
fine-tunes only the cross-attention projections ``W_k`` and ``W_v`` (optionally ``W_q`` and ``W_out``). A subject stores
``ΔW = W_trained - W_base``; this processor projects with ``W_base + Σ_s scale_s · ΔW_s`` (and
``b_out + Σ_s scale_s · Δb_s``), so several subjects compose and each keeps its own strength.

The math is diffusers' ``AttnProcessor2_0`` (PyTorch scaled-dot-product attention) line for line; only the four
projections change. Projections without a delta call the layer's own ``nn.Linear``, so a layer whose scales are 0
produces bit-identical output to the stock processor. When the projection is not a plain ``nn.Linear`` — a peft
LoRA layer put there by ``pipe.load_lora_weights`` (a style LoRA), or a layer under accelerate's offloading hooks
(``enable_sequential_cpu_offload``), whose weight only exists inside its forward — the processor calls the layer's
own forward and adds ``ΔW x`` (and ``Δb``): ``W x + scale_lora·B A x + Σ scale_s·ΔW_s x``, so subjects and LoRAs
compose in either load order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .subject_tensors import LowRankDelta

PROJ_ATTRS = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out.0": "to_out"}


@dataclass
class _LayerDelta:
    """One subject's contribution to one attention layer."""

    weights: dict[str, torch.Tensor | LowRankDelta]
    out_bias: torch.Tensor | None = None
    scale: float = 1.0


@dataclass(eq=False)  # identity semantics (hashable), like diffusers' own processors
class SubjectAttnProcessor:
    """SDPA attention whose q/k/v/out projections add the scaled deltas of every subject loaded on this layer.

    ``base_processor`` is the processor that was on the layer before the first subject arrived; it is put back when
    the last one leaves. The summed delta per projection is cached per (device, dtype) and rebuilt only when a
    subject is added, removed or rescaled, so a call costs one weight-sized addition per changed projection.
    """

    base_processor: object
    subjects: dict[str, _LayerDelta] = field(default_factory=dict, repr=False)
    _cache: dict[tuple, torch.Tensor | None] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        scales = {token: entry.scale for token, entry in self.subjects.items()}
        return f"SubjectAttnProcessor(subjects={scales}, base={type(self.base_processor).__name__})"

    # -- subject bookkeeping ---------------------------------------------------------------------------------------
    def add(self, token: str, weights: dict[str, torch.Tensor], out_bias: torch.Tensor | None, scale: float) -> None:
        self.subjects[token] = _LayerDelta(dict(weights), out_bias, float(scale))
        self._cache.clear()

    def remove(self, token: str) -> None:
        self.subjects.pop(token, None)
        self._cache.clear()

    def set_scale(self, token: str, scale: float) -> None:
        self.subjects[token].scale = float(scale)
        self._cache.clear()

    # -- effective weights -----------------------------------------------------------------------------------------
    def _summed(self, key: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        """``Σ scale · Δ`` over dense deltas for one projection weight (key ``to_k``) or the out bias (key ``bias``)."""
        cache_key = (key, device, dtype)
        if cache_key not in self._cache:
            total = None
            for entry in self.subjects.values():
                delta = entry.out_bias if key == "bias" else entry.weights.get(key)
                if delta is None or entry.scale == 0.0 or isinstance(delta, LowRankDelta):
                    continue
                term = delta.to(device=device, dtype=torch.float32) * entry.scale
                total = term if total is None else total + term
            self._cache[cache_key] = None if total is None else total.to(dtype)
        return self._cache[cache_key]

    def _low_rank(self, key: str, device: torch.device, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(down, scale · up)`` of every factored delta on one projection (added as ``scale · up (down x)``)."""
        cache_key = ("low_rank", key, device, dtype)
        if cache_key not in self._cache:
            self._cache[cache_key] = [
                (entry.weights[key].down.to(device=device, dtype=dtype),
                 (entry.weights[key].up.to(device=device, dtype=torch.float32) * entry.scale).to(dtype))
                for entry in self.subjects.values()
                if isinstance(entry.weights.get(key), LowRankDelta) and entry.scale != 0.0
            ]
        return self._cache[cache_key]

    def _project(self, attn, proj: str, inputs: torch.Tensor) -> torch.Tensor:
        module = getattr(attn, PROJ_ATTRS[proj])
        if proj == "to_out.0":
            module = module[0]
        plain = type(module) is torch.nn.Linear and not hasattr(module, "_hf_hook") and module.weight.device.type != "meta"
        device, dtype = (module.weight.device, module.weight.dtype) if plain else (inputs.device, inputs.dtype)
        delta = self._summed(proj, device, dtype)
        bias_delta = self._summed("bias", device, dtype) if proj == "to_out.0" else None
        low_rank = self._low_rank(proj, device, dtype)
        if not plain:
            # A LoRA-wrapped Linear (peft, after pipe.load_lora_weights) or accelerate's offloading (the weight only
            # exists inside forward): run the layer's own forward, then add the subjects' ΔW x (+ Δb).
            output = module(inputs)
            if delta is not None:
                output = output + F.linear(inputs, delta)
            if bias_delta is not None:
                output = output + bias_delta
        elif delta is None and bias_delta is None:
            output = module(inputs)
        else:
            # a plain Linear: one matmul with W + ΔW (the cached Σ scale·ΔW is added to the live weight, so a LoRA
            # fused into W later, or any other in-place change of W, is seen)
            weight = module.weight if delta is None else module.weight + delta
            bias = module.bias
            if bias_delta is not None:
                bias = bias_delta if bias is None else bias + bias_delta
            output = F.linear(inputs, weight, bias)
        for down, up in low_rank:
            output = output + F.linear(F.linear(inputs, down), up)
        return output

    # -- diffusers processor protocol (mirrors AttnProcessor2_0) ----------------------------------------------------
    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = self._project(attn, "to_q", hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = self._project(attn, "to_k", encoder_hidden_states)
        value = self._project(attn, "to_v", encoder_hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        hidden_states = self._project(attn, "to_out.0", hidden_states)
        hidden_states = attn.to_out[1](hidden_states)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def attach_layer_delta(unet, layer: str, token: str, weights, out_bias, scale: float) -> None:
    """Add one subject's deltas to ``layer`` of ``unet``, installing a :class:`SubjectAttnProcessor` if needed."""
    attn = unet.get_submodule(layer)
    processor = attn.processor
    if not isinstance(processor, SubjectAttnProcessor):
        processor = SubjectAttnProcessor(base_processor=attn.processor)
        attn.set_processor(processor)
    processor.add(token, weights, out_bias, scale)


def detach_layer_delta(unet, layer: str, token: str) -> None:
    """Remove a subject from ``layer``; put the original processor back when no subject is left there."""
    attn = unet.get_submodule(layer)
    processor = attn.processor
    if not isinstance(processor, SubjectAttnProcessor):
        return
    processor.remove(token)
    if not processor.subjects:
        attn.set_processor(processor.base_processor)


def set_layer_scale(unet, layer: str, token: str, scale: float) -> None:
    processor = unet.get_submodule(layer).processor
    if isinstance(processor, SubjectAttnProcessor) and token in processor.subjects:
        processor.set_scale(token, scale)
