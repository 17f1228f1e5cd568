"""``cd+cr``: Cross-Initialised token vectors (Pang et al., CVPR 2024) trained together with Custom Diffusion's
cross-attention deltas (Kumari et al., CVPR 2023). No reference implements the pair; each part keeps its own recipe:

- the token rows: Cross Initialization's start, L2 pull (reg_weight 1e-5), 2 vectors, captions from its template
  list around "face of {} person", and its rate rule (0.000625 x batch x processes);
- the deltas: Custom Diffusion's scope ``kv+q+out``, rate 5e-6 with its rule (x batch x processes, x2 with prior
  preservation), batch 2, 1000 steps, gradient clipping at 1.0, and its loss averaging over the mask's pixels.
"""

from __future__ import annotations

from typing import Any

from subjectgen_diffusers.methods import CD_PLUS_CR
from subjectgen_training.methods.base import MethodConfigError, Rates, cross_init_lr, custom_diffusion_lr
from subjectgen_training.methods.cd import CustomDiffusion
from subjectgen_training.methods.cross_init import CrossInitTokens


class CustomDiffusionCrossInit(CustomDiffusion):
    info = CD_PLUS_CR
    defaults: dict[str, Any] = dict(
        steps=1000, lr=5e-6, token_lr=0.000625, batch_size=2, cd_scope="kv+q+out", num_vectors=2, reg_weight=1e-5,
        init_word=None, prompt="face of {} person", class_prompt="person", flip_p=0.5, random_rescale=False,
        caption_templates=True, max_grad_norm=1.0,
    )
    instance_loss_mean = "pixels"

    def build_tokens(self, config):
        return CrossInitTokens(config.reg_weight, config.celeb_names)

    @classmethod
    def resolve(cls, values: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
        if given.get("init_word") is not None:
            raise MethodConfigError("init_word does not apply to cd+cr (the token is cross-initialised); drop it or "
                                    "use --method cd.")
        return values

    @classmethod
    def rates(cls, config, num_processes: int) -> Rates:
        if not config.scale_lr:
            return Rates(config.lr, config.token_lr)
        accumulation = config.gradient_accumulation_steps
        lr = custom_diffusion_lr(config.lr, batch_size=config.batch_size, num_processes=num_processes,
                                 prior_preservation=bool(config.reg_dir), gradient_accumulation_steps=accumulation)
        return Rates(lr, cross_init_lr(config.token_lr, batch_size=config.batch_size, num_processes=num_processes,
                                       gradient_accumulation_steps=accumulation))
