"""``cd+cr``: Cross-Initialised token vectors (Pang et al., CVPR 2024) trained together with Custom Diffusion's
cross-attention deltas (Kumari et al., CVPR 2023). No reference implements the pair; each part keeps its own recipe:

- the token rows: Cross Initialization's start, L2 pull (reg_weight 1e-5), 2 vectors, captions from its template
  list around "face of {} person", and its rate rule (0.000625 x batch x processes);
- the deltas: Custom Diffusion's scope ``kv+q+out``, rate 5e-6 with its rule (x batch x processes, x2 with prior
  preservation), batch 2, 1000 steps, gradient clipping at 1.0, and its loss averaging over the mask's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from subjectgen_diffusers.methods import CD_PLUS_CR
from subjectgen_training.methods.base import Rates, cross_init_lr, custom_diffusion_lr
from subjectgen_training.methods.cd import CustomDiffusion
from subjectgen_training.methods.cross_init import CrossInitOptions, CrossInitTokens
from subjectgen_training.methods.custom_diffusion import DeltaOptions


@dataclass
class CustomDiffusionCrossInitConfig(DeltaOptions, CrossInitOptions):
    """``cd+cr``'s own fields: the deltas' scope and bias, Cross Initialization's pull and name list."""


class CustomDiffusionCrossInit(CustomDiffusion):
    info = CD_PLUS_CR
    options = CustomDiffusionCrossInitConfig
    defaults: dict[str, Any] = dict(
        steps=1000, lr=5e-6, token_lr=0.000625, batch_size=2, num_vectors=2, prompt="face of {} person", class_prompt="person", flip_p=0.5, random_rescale=False,
        caption_templates=True, max_grad_norm=1.0,
    )
    instance_loss_mean = "pixels"

    def build_tokens(self, config):
        return CrossInitTokens(config.options.reg_weight, config.options.celeb_names)

    @classmethod
    def resolve(cls, values: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
        return values  # its token rate is its own (Cross Initialization's), not the deltas' rate

    @classmethod
    def rates(cls, config, num_processes: int) -> Rates:
        if not config.scale_lr:
            return Rates(config.lr, config.token_lr)
        accumulation = config.gradient_accumulation_steps
        lr = custom_diffusion_lr(config.lr, batch_size=config.batch_size, num_processes=num_processes,
                                 prior_preservation=bool(config.reg_dir), gradient_accumulation_steps=accumulation)
        return Rates(lr, cross_init_lr(config.token_lr, batch_size=config.batch_size, num_processes=num_processes,
                                       gradient_accumulation_steps=accumulation))
