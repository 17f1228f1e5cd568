"""Custom Diffusion's weight deltas (Kumari et al., "Multi-Concept Customization of Text-to-Image Diffusion",
CVPR 2023): fine-tune the cross-attention projections of the UNet — ``kv`` (W_k, W_v) or ``kv+q+out`` (also W_q
and the output projection with its bias).

Each cross-attention layer gets diffusers' ``CustomDiffusionAttnProcessor2_0`` (SDPA) whose trainable linears start
as copies of the base projections; the processor detaches K/V at the start token so it takes no gradient. The base
projections stay untouched, so the saved delta is ``ΔW = W_trained - W_base`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

SCOPE_PROJECTIONS = {"kv": ("to_k", "to_v"), "kv+q+out": ("to_q", "to_k", "to_v", "to_out.0")}
_PROCESSOR_WEIGHT = {"to_q": "to_q_custom_diffusion", "to_k": "to_k_custom_diffusion",
                     "to_v": "to_v_custom_diffusion", "to_out.0": "to_out_custom_diffusion.0"}


def cross_attention_layers(unet) -> dict[str, nn.Module]:
    """``name -> Attention`` for every cross-attention module (``attn2``) of a UNet."""
    return {
        name: module
        for name, module in unet.named_modules()
        if name.endswith("attn2") and getattr(module, "is_cross_attention", False)
    }


def _submodule(module: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


@dataclass
class CustomDiffusionDeltas:
    """Installs trainable copies of the scoped projections and turns them back into deltas."""

    scope: str
    processors: dict[str, nn.Module] = field(default_factory=dict, repr=False)
    bases: dict[str, nn.Module] = field(default_factory=dict, repr=False)

    @property
    def projections(self) -> tuple[str, ...]:
        return SCOPE_PROJECTIONS[self.scope]

    def attach(self, unet) -> nn.ModuleDict:
        """Give every cross-attention layer a Custom Diffusion processor; return the trainable modules by layer."""
        from diffusers.models.attention_processor import AttnProcessor2_0, CustomDiffusionAttnProcessor2_0

        layers = cross_attention_layers(unet)
        if not layers:
            raise ValueError("this UNet has no cross-attention layers to train")
        train_q_out = self.scope == "kv+q+out"
        processors = {}
        for name, attn in unet.named_modules():
            if not hasattr(attn, "set_processor"):
                continue
            processor_name = f"{name}.processor"
            if name not in layers:
                processors[processor_name] = AttnProcessor2_0()
                continue
            processor = CustomDiffusionAttnProcessor2_0(
                train_kv=True,
                train_q_out=train_q_out,
                hidden_size=attn.to_q.out_features,
                cross_attention_dim=attn.to_k.in_features,
                out_bias=attn.to_out[0].bias is not None,
            ).to(device=attn.to_q.weight.device, dtype=torch.float32)
            with torch.no_grad():
                for proj in self.projections:
                    target = _submodule(processor, _PROCESSOR_WEIGHT[proj])
                    source = _submodule(attn, proj)
                    target.weight.copy_(source.weight)
                    if proj == "to_out.0" and source.bias is not None:
                        target.bias.copy_(source.bias)
            processor.requires_grad_(True)
            processors[processor_name] = processor
            self.processors[name] = processor
            self.bases[name] = attn
        unet.set_attn_processor(processors)
        return nn.ModuleDict({name.replace(".", "__"): p for name, p in self.processors.items()})

    def parameters(self) -> list[nn.Parameter]:
        return [p for processor in self.processors.values() for p in processor.parameters()]

    @torch.no_grad()
    def export(self) -> tuple[list[str], dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """``(layers, {layer: {proj: ΔW}}, {layer: Δb})`` with ``ΔW = W_trained - W_base`` in float32."""
        deltas: dict[str, dict[str, torch.Tensor]] = {}
        bias_deltas: dict[str, torch.Tensor] = {}
        for name, processor in self.processors.items():
            attn = self.bases[name]
            deltas[name] = {}
            for proj in self.projections:
                trained = _submodule(processor, _PROCESSOR_WEIGHT[proj])
                base = _submodule(attn, proj)
                deltas[name][proj] = (trained.weight.float() - base.weight.float()).cpu().contiguous()
                if proj == "to_out.0" and base.bias is not None:
                    bias_deltas[name] = (trained.bias.float() - base.bias.float()).cpu().contiguous()
        return sorted(self.processors), deltas, bias_deltas

    def describe(self) -> dict:
        return {"cd_scope": self.scope, "layers": len(self.processors)}
