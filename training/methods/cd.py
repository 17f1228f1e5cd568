"""``cd``: Custom Diffusion (Kumari et al., "Multi-Concept Customization of Text-to-Image Diffusion", CVPR 2023).

Trains the cross-attention projections of the UNet (as deltas, :mod:`subjectgen_training.methods.custom_diffusion`) and a
modifier token started from the vocabulary entry ``ktn`` (:mod:`subjectgen_training.methods.word_init`), both in one optimizer
group at one rate, as diffusers' ``examples/custom_diffusion/train_custom_diffusion.py`` does.

Recipe: the "Training on human faces" command of that example's README: ``--learning_rate=5e-6
--train_batch_size=2 --max_train_steps=1000 --scale_lr --hflip --noaug --freeze_model crossattn
--with_prior_preservation --prior_loss_weight=1.0 --class_prompt="person" --num_class_images=200
--instance_prompt="photo of a <new1> person" --resolution=512`` (the text above it says 1000 to 2000 steps). The
loss averages the masked instance term over the mask's pixels (``instance_loss_mean = "pixels"``), as the script.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from subjectgen_diffusers.methods import CUSTOM_DIFFUSION
from subjectgen_training.methods.base import Method, Rates, SubjectParts, custom_diffusion_lr
from subjectgen_training.methods.custom_diffusion import CustomDiffusionDeltas, DeltaOptions
from subjectgen_training.methods.word_init import WordInitOptions, WordInitTokens


@dataclass
class CustomDiffusionConfig(DeltaOptions, WordInitOptions):
    """``cd``'s own fields: the deltas' scope and bias, the token's start word."""


class CustomDiffusion(Method):
    info = CUSTOM_DIFFUSION
    options = CustomDiffusionConfig
    defaults: dict[str, Any] = dict(
        steps=1000, lr=5e-6, token_lr=None, batch_size=2, num_vectors=1,
        prompt="photo of a {} person", class_prompt="person", flip_p=0.5, random_rescale=False,
        caption_templates=False, max_grad_norm=1.0,
    )
    instance_loss_mean = "pixels"

    def __init__(self, config):
        super().__init__(config)
        self.tokens = self.build_tokens(config)
        self.deltas = CustomDiffusionDeltas(config.options.cd_scope, train_bias=config.options.cd_train_bias)

    def build_tokens(self, config):
        return WordInitTokens(config.options.init_word)

    @classmethod
    def resolve(cls, values: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
        if values["token_lr"] is None:  # the reference trains the token and the deltas in one group at one rate
            values["token_lr"] = values["lr"]
        return values

    @classmethod
    def rates(cls, config, num_processes: int) -> Rates:
        if not config.scale_lr:
            return Rates(config.lr, config.token_lr)
        scale = dict(batch_size=config.batch_size, num_processes=num_processes, prior_preservation=bool(config.reg_dir),
                     gradient_accumulation_steps=config.gradient_accumulation_steps)
        return Rates(custom_diffusion_lr(config.lr, **scale), custom_diffusion_lr(config.token_lr, **scale))

    def check_inputs(self) -> None:
        check = getattr(self.tokens, "check_inputs", None)
        if check is not None:
            check()

    def initial_rows_for(self, view, token_ids: list[int]) -> torch.Tensor:
        return self.tokens.initial_rows_for(view, token_ids)

    def attach(self, unet, layers: list[str]) -> None:
        self.deltas.attach(unet, layers)

    def weight_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {f"cd.{layer}.{name}": param for layer, processor in self.deltas.processors.items()
                for name, param in processor.named_parameters() if param.requires_grad}

    def extra_loss(self, rows: torch.Tensor, encoder: str | None = None) -> torch.Tensor | None:
        return self.tokens.extra_loss(rows, encoder)

    def subject_parts(self) -> SubjectParts:
        layers, deltas, bias_deltas = self.deltas.export()
        return SubjectParts(layers, deltas, bias_deltas, self.deltas.scope)

    def describe(self) -> dict[str, Any]:
        return {"method": self.name(), **self.tokens.describe(), **self.deltas.describe()}
