"""The denoising losses of the trainer (DDPM's simple loss, Ho et al. 2020, on the UNet's noise or velocity output).

Instance term, per sample, with a ``[B, 1, h, w]`` mask (random-rescale canvas x optional face weighting) broadcast
over the latent channels:

- ``"pixels"``: ``sum((pred - target)^2 * mask) / sum(mask)``, the channel sum averaged over the mask's pixels, as
  diffusers' ``examples/custom_diffusion/train_custom_diffusion.py`` (the "Compute instance loss" lines of the
  training step; the seed's code base). With 4 latent channels this is 4x the element mean.
- ``"elements"``: the same divided by the channel count too, i.e. ``F.mse_loss(pred, target)`` (mean) when the mask
  is all ones, as ``train_cross_init.py`` of lyuPang/CrossInitialization.

Prior term (regularisation images): the element mean, ``F.mse_loss(..., reduction="mean")``, as the Custom Diffusion
script; it is added with ``prior_loss_weight``.
"""

from __future__ import annotations

import torch

MEANS = ("pixels", "elements")


def instance_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, mean_over: str) -> torch.Tensor:
    """Per-sample masked squared error ``[B]`` averaged as ``mean_over`` says (module docstring)."""
    if mean_over not in MEANS:
        raise ValueError(f"mean_over must be one of {MEANS}, got {mean_over!r}")
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"the mask must be [B, 1, h, w], got {tuple(mask.shape)}")
    squared = (prediction.float() - target.float()) ** 2 * mask.float()
    pixels = mask.float().sum(dim=(1, 2, 3))
    if mean_over == "elements":
        pixels = pixels * prediction.shape[1]
    return squared.sum(dim=(1, 2, 3)) / pixels.clamp_min(1e-8)


def prior_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element of the class images' predictions."""
    return torch.nn.functional.mse_loss(prediction.float(), target.float(), reduction="mean")
