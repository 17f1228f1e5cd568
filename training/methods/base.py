"""The shape every personalisation method has (after peft's ``tuners/<method>``): a recipe of published defaults
with its own checks, the learning-rate rule of its reference, what it trains (token rows, optionally Custom
Diffusion deltas), its token start, its extra loss, and what it writes into the subject.

The trainer only calls these hooks; it never looks at a method's name. A method is one subclass in one module plus
its registration line in :mod:`subjectgen_training.methods`.

Learning-rate scaling (both references multiply the given rate when ``--scale_lr`` is passed, and both recipes pass
it):

- Custom Diffusion, diffusers ``examples/custom_diffusion/train_custom_diffusion.py`` (the ``if args.scale_lr:`` block
  in `main()` right after the attention processors are set): ``lr x gradient accumulation x batch x processes``, and x2
  more with prior preservation (the batch then also holds as many class images).
- Cross Initialization, ``lyuPang/CrossInitialization`` ``train_cross_init.py`` (the ``if args.scale_lr:`` block
  in `train()` right before the optimizer is built): ``lr x gradient accumulation x batch x processes``; its README runs
  ``--learning_rate 0.000625 --train_batch_size 8 --scale_lr``, i.e. 0.005 on one GPU.

Gradient accumulation (``gradient_accumulation_steps``, accelerate's ``Accelerator(gradient_accumulation_steps=...)``)
enters both rules as the references' ``args.gradient_accumulation_steps`` does: N batches per optimizer step on one
GPU give the global batch, and the scaled rate, of N GPUs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from subjectgen_diffusers.errors import SubjectgenError
from subjectgen_diffusers.methods import MethodInfo

if TYPE_CHECKING:  # the config imports the registry, not the other way round
    from subjectgen_training.trainer.config import TrainConfig

logger = logging.getLogger(__name__)


class MethodConfigError(SubjectgenError):
    """A training value does not fit the chosen method; the message says what to change."""


def custom_diffusion_lr(rate: float, *, batch_size: int, num_processes: int, prior_preservation: bool,
                        gradient_accumulation_steps: int = 1) -> float:
    """Custom Diffusion's ``--scale_lr`` rule (see the module docstring)."""
    return rate * gradient_accumulation_steps * batch_size * num_processes * (2.0 if prior_preservation else 1.0)


def cross_init_lr(rate: float, *, batch_size: int, num_processes: int, gradient_accumulation_steps: int = 1) -> float:
    """Cross Initialization's ``--scale_lr`` rule (see the module docstring)."""
    return rate * gradient_accumulation_steps * batch_size * num_processes


@dataclass(frozen=True)
class Rates:
    """The learning rates the optimizer really uses. ``lr``: weight deltas (None: the method trains none)."""

    lr: float | None
    token_lr: float


@dataclass
class SubjectParts:
    """What a method contributes to the subject files besides the token rows."""

    layers: list[str]
    deltas: dict[str, dict[str, torch.Tensor]]
    bias_deltas: dict[str, torch.Tensor]
    cd_scope: str | None


@dataclass
class NoOptions:
    """The config of a method without fields of its own."""


class Method:
    """One personalisation method. Subclasses set the class attributes and may override the hooks."""

    info: ClassVar[MethodInfo]
    # the method's own fields: a dataclass whose fields are declared with config_flags.option (help, kind, default);
    # `subjectgen train` shows them as the method's group, a file gives them as top-level keys, the run's config
    # holds them as `config.options`
    options: ClassVar[type] = NoOptions
    defaults: ClassVar[dict[str, Any]]  # shared TrainConfig field -> the reference recipe's value
    # How the per-sample instance loss is averaged: "pixels" = sum over channels / number of (masked) pixels, as
    # diffusers' train_custom_diffusion.py; "elements" = mean over every latent element, as F.mse_loss(mean).
    instance_loss_mean: ClassVar[str]

    def __init__(self, config: TrainConfig):
        self.config = config

    # -- recipe ------------------------------------------------------------------------------------------------
    @classmethod
    def name(cls) -> str:
        return cls.info.name

    @classmethod
    def resolve(cls, values: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
        """Fill method-dependent values and reject ones that make no sense for the method. ``values``: the config
        with the recipe defaults filled in; ``given``: what the user set (None = not set)."""
        return values

    @classmethod
    def rates(cls, config: TrainConfig, num_processes: int) -> Rates:
        """The rates the optimizer uses: the given ones, scaled by the reference's rule unless ``scale_lr`` is off."""
        raise NotImplementedError

    # -- training ----------------------------------------------------------------------------------------------
    def check_inputs(self) -> None:
        """Check the method's own input files before any model loads."""

    def initial_rows(self, tokenizer, text_encoder, token_ids: list[int]) -> torch.Tensor:
        raise NotImplementedError

    def initial_rows_for(self, view, token_ids: list[int]) -> torch.Tensor:
        """The start of ``token_ids`` in one text encoder (``view``: a
        :class:`subjectgen_training.models.text_features.EncoderView`; called once per encoder of the base). By default
        :meth:`initial_rows` with that encoder's tokenizer and module; a method whose start needs the features the
        pipeline feeds the UNet reads ``view.features``."""
        return self.initial_rows(view.tokenizer, view.text_encoder, token_ids)

    def attach(self, unet, layers: list[str]) -> None:
        """Install what the method trains inside the UNet (nothing for token-only methods); ``layers``: the attention
        modules the model family says Custom Diffusion trains."""

    def weight_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Trainable tensors besides the token rows, by a stable name (checkpoints use the names)."""
        return {}

    def extra_loss(self, rows: torch.Tensor, encoder: str | None = None) -> torch.Tensor | None:
        """A loss on one encoder's token rows (``encoder``: its pipeline attribute; None: the first)."""
        return None

    # -- outputs -----------------------------------------------------------------------------------------------
    def subject_parts(self) -> SubjectParts:
        return SubjectParts([], {}, {}, None)

    def describe(self) -> dict[str, Any]:
        """What goes into the subject's ``training`` record."""
        return {"method": self.name()}

