"""Stage 1 of the toy base (:mod:`subjectgen_training.toy.train_base`): the VAE as an autoencoder on the rendered world
(L1 + L2 reconstruction weighted up on small details, a tiny L2 pull on the latents, cosine learning-rate decay,
log-variance pinned so sampling returns the mean); its latent scale gives ``scaling_factor`` (1/std, as SD's 0.18215
was found)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .architecture import toy_vae

if TYPE_CHECKING:
    from .train_base import BaseTrainConfig


def make_deterministic(vae) -> None:
    """Pin the posterior's log-variance at -30 (std 3e-7): ``latent_dist.sample()`` then equals its mean, so every
    trainer that samples latents (as SD trainers do) sees the latents the decoder was trained on. A CPU-sized run
    cannot afford to learn small variances the slow way; a sampled std of ~1 blurred every small detail."""
    channels = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[channels:] = 0.0
        vae.quant_conv.bias[channels:] = -30.0


def detail_map(images: torch.Tensor) -> torch.Tensor:
    """1 where a pixel differs clearly from the mean of its 3x3 neighbourhood (edges and small features), else 0."""
    local = F.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
    return ((images - local).abs().sum(1, keepdim=True) > 0.15).float()


def train_vae(config: BaseTrainConfig, images: torch.Tensor, generator: torch.Generator):
    vae = toy_vae()
    make_deterministic(vae)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr)
    bar = tqdm(range(config.vae_steps), desc="vae", mininterval=30)
    for step in bar:
        batch = images[torch.randint(len(images), (config.vae_batch,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.mean).sample
        for group in optimizer.param_groups:
            group["lr"] = config.vae_lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / config.vae_steps)))
        # L1 + L2, weighted up where a pixel differs from its 3x3 neighbourhood: the small details that make a
        # subject (the 4-pixel mark, the irises) are a tiny share of the pixels and blurred first otherwise.
        weight = 1.0 + config.vae_detail_weight * detail_map(batch)
        error = recon - batch
        loss = (weight * (error.abs() + error.pow(2))).mean() + config.kl_weight * posterior.mean.pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    make_deterministic(vae)
    vae.eval().requires_grad_(False)
    return vae


@torch.no_grad()
def encode_dataset(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for start in range(0, len(images), 256):
        posterior = vae.encode(images[start : start + 256]).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def load_or_train_vae(config: BaseTrainConfig, images: torch.Tensor, generator: torch.Generator, work: Path):
    from diffusers import AutoencoderKL

    if config.vae_from:  # a trained toy VAE (the SD toy's, for the toy SDXL): loaded in fp32 whatever its files hold
        return AutoencoderKL.from_pretrained(config.vae_from, torch_dtype=torch.float32).eval().requires_grad_(False)
    vae_path = work / "vae"
    if (vae_path / "config.json").is_file():
        return AutoencoderKL.from_pretrained(vae_path).eval().requires_grad_(False)
    vae = train_vae(config, images, generator)
    means, _ = encode_dataset(vae, images[:2048])  # SD's scaling factor is 1/std of the latents, found the same way
    vae.register_to_config(scaling_factor=float(1.0 / means.std()))
    vae.save_pretrained(vae_path)
    return vae
