"""Custom Diffusion's weight deltas (Kumari et al., "Multi-Concept Customization of Text-to-Image Diffusion",
CVPR 2023): fine-tune the cross-attention projections of the UNet — ``kv`` (W_k, W_v) or ``kv+q+out`` (also W_q
and the output projection with its bias).

Each cross-attention layer gets diffusers' ``CustomDiffusionAttnProcessor2_0`` (SDPA) whose trainable linears start
as copies of the base projections; the processor detaches K/V at the start token so it takes no gradient. The base
projections are cast to the compute dtype under mixed precision, so the delta is taken against a float32 copy of the
trainable weights as they started (``ΔW = W_trained - W_start``, with ``W_start`` the float32 base weights): a run that
trains nothing saves zero deltas in fp32, fp16 and bf16 alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from subjectgen_diffusers.methods import CD_PROCESSOR_WEIGHTS, CD_SCOPES
from subjectgen_training.config_flags import option
from subjectgen_training.methods.base import MethodConfigError


@dataclass
class DeltaOptions:
    """The training fields of Custom Diffusion's weight deltas (methods ``cd`` and ``cd+cr``)."""

    cd_scope: str = option("kv+q+out", choices=tuple(CD_SCOPES),
                           help="which attention projections Custom Diffusion trains")
    cd_train_bias: bool = option(True, kind="negatable", help="with --cd-scope kv+q+out, also train the output "
                                 "projection's bias as the reference does; --no-cd-train-bias keeps it frozen, so an "
                                 "exported LoRA loses nothing in readers that skip bias deltas (sd-scripts, InvokeAI, "
                                 "A1111)")

    def __post_init__(self) -> None:
        if self.cd_scope not in CD_SCOPES:
            raise MethodConfigError(f"cd_scope must be one of {list(CD_SCOPES)}, got {self.cd_scope!r}.")


def _submodule(module: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


@dataclass
class CustomDiffusionDeltas:
    """Installs trainable copies of the scoped projections and turns them back into deltas."""

    scope: str
    train_bias: bool = True  # the to_out bias (scope kv+q+out); frozen, the subject has no bias deltas
    processors: dict[str, nn.Module] = field(default_factory=dict, repr=False)
    starts: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)

    @property
    def projections(self) -> tuple[str, ...]:
        return CD_SCOPES[self.scope]

    def attach(self, unet, layers: list[str]) -> nn.ModuleDict:
        """Give each of ``layers`` (the attention modules the model family names) a Custom Diffusion processor;
        return the trainable modules by layer."""
        from diffusers.models.attention_processor import AttnProcessor2_0, CustomDiffusionAttnProcessor2_0

        layers = set(layers)
        if not layers:
            raise ValueError("this UNet has no cross-attention layers to train")
        train_q_out = "to_q" in self.projections
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
            start: dict[str, torch.Tensor] = {}
            with torch.no_grad():
                for proj in self.projections:
                    target = _submodule(processor, CD_PROCESSOR_WEIGHTS[proj])
                    source = _submodule(attn, proj)
                    target.weight.copy_(source.weight)
                    start[proj] = source.weight.detach().float().cpu().clone()
                    if proj == "to_out.0" and source.bias is not None:
                        target.bias.copy_(source.bias)
                        if self.train_bias:
                            start["to_out.0.bias"] = source.bias.detach().float().cpu().clone()
            processor.requires_grad_(True)
            if "to_out.0" in self.projections and not self.train_bias and attn.to_out[0].bias is not None:
                _submodule(processor, CD_PROCESSOR_WEIGHTS["to_out.0"]).bias.requires_grad_(False)
            processors[processor_name] = processor
            self.processors[name] = processor
            self.starts[name] = start
        unet.set_attn_processor(processors)
        return nn.ModuleDict({name.replace(".", "__"): p for name, p in self.processors.items()})

    def parameters(self) -> list[nn.Parameter]:
        return [p for processor in self.processors.values() for p in processor.parameters() if p.requires_grad]

    @torch.no_grad()
    def export(self) -> tuple[list[str], dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """``(layers, {layer: {proj: ΔW}}, {layer: Δb})``, ``ΔW = W_trained - W_start`` in float32 (module docstring)."""
        deltas: dict[str, dict[str, torch.Tensor]] = {}
        bias_deltas: dict[str, torch.Tensor] = {}
        for name, processor in self.processors.items():
            start = self.starts[name]
            deltas[name] = {}
            for proj in self.projections:
                trained = _submodule(processor, CD_PROCESSOR_WEIGHTS[proj])
                deltas[name][proj] = (trained.weight.detach().float().cpu() - start[proj]).contiguous()
                if "to_out.0.bias" in start and proj == "to_out.0":
                    bias_deltas[name] = (trained.bias.detach().float().cpu() - start["to_out.0.bias"]).contiguous()
        return sorted(self.processors), deltas, bias_deltas

    def describe(self) -> dict:
        return {"cd_scope": self.scope, "layers": len(self.processors), "cd_train_bias": self.train_bias}
