"""``cr``: Cross Initialization (Pang et al., "Cross Initialization for Face Personalization of Text-to-Image
Models", CVPR 2024): textual inversion whose vectors start from the text encoder's output for the mean celebrity-name
embedding, with an L2 pull back to that start (:mod:`subjectgen_training.methods.cross_init`). No UNet weights train.

Recipe: the README command of lyuPang/CrossInitialization: ``--train_batch_size 8 --scale_lr --n_persudo_tokens 2
--reg_weight 1e-5 --learning_rate 0.000625 --max_train_step 320`` with the packaged ``wiki_names_v2.txt`` names;
``train_cross_init.py`` uses plain ``torch.optim.AdamW`` (weight decay 1e-2), clips no gradients and averages the
loss over every latent element (``F.mse_loss`` with its default mean: ``instance_loss_mean = "elements"``); its
dataset (``textual_inversion_dataset.py``) flips with p 0.5 and captions each image with a random template of its
ImageNet-style list around "face of {} person" (:mod:`subjectgen_training.data.captions`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from subjectgen_diffusers.methods import CROSS_INITIALIZATION
from subjectgen_training.methods.base import Method, Rates, cross_init_lr
from subjectgen_training.methods.cross_init import CrossInitOptions, CrossInitTokens

logger = logging.getLogger(__name__)


class CrossInitialization(Method):
    info = CROSS_INITIALIZATION
    options = CrossInitOptions
    defaults: dict[str, Any] = dict(
        steps=320, lr=None, token_lr=0.000625, batch_size=8, num_vectors=2, prompt="face of {} person", class_prompt="person", flip_p=0.5, random_rescale=False,
        caption_templates=True, max_grad_norm=0.0,
    )
    instance_loss_mean = "elements"

    def __init__(self, config):
        super().__init__(config)
        self.tokens = CrossInitTokens(config.options.reg_weight, config.options.celeb_names)

    @classmethod
    def resolve(cls, values: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
        if given.get("lr") is not None:
            logger.warning("lr %s is the weight-delta rate; method cr trains only token rows, so it is unused "
                           "(set token_lr for the token rate).", given["lr"])
        return values

    @classmethod
    def rates(cls, config, num_processes: int) -> Rates:
        if not config.scale_lr:
            return Rates(None, config.token_lr)
        return Rates(None, cross_init_lr(config.token_lr, batch_size=config.batch_size, num_processes=num_processes,
                                         gradient_accumulation_steps=config.gradient_accumulation_steps))

    def check_inputs(self) -> None:
        self.tokens.check_inputs()

    def initial_rows_for(self, view, token_ids: list[int]) -> torch.Tensor:
        return self.tokens.initial_rows_for(view, token_ids)

    def extra_loss(self, rows: torch.Tensor, encoder: str | None = None) -> torch.Tensor | None:
        return self.tokens.extra_loss(rows, encoder)

    def describe(self) -> dict[str, Any]:
        return {"method": self.name(), **self.tokens.describe()}
