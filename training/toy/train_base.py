"""Train the toy base model from scratch on the toy world (reproducible, resumable, CPU-sized).

Two stages, as Stable Diffusion was built (Rombach et al. 2022): (1) the VAE as an autoencoder (L1 + L2 reconstruction, a
tiny L2 pull on the latents, cosine learning-rate decay, log-variance pinned so sampling returns the mean), whose latent scale gives ``scaling_factor`` (SD's 0.18215 was found the same way, 1/std); (2) the
UNet and the text encoder jointly on cached latents with the DDPM ε-prediction loss (Ho et al. 2020) under SD 1.5's
noise schedule, 10% empty captions for classifier-free guidance (Ho & Salimans 2022) and an EMA of the weights.

Train (about 20 CPU-minutes on one thread with the defaults; ``--work`` keeps a resumable state)::

    nice -n 10 python -m training.toy.train_base --out training/toy/weights/toy-base \
        --alt-out training/toy/weights/toy-alt --work /tmp/toy-base-work

Status: with these defaults (800 VAE steps, 2800 UNet steps) the model draws faces and starts to follow the caption's
background, but not yet hair/accessories, so no weights ship yet: ``tests/test_toy_base.py`` states the bar.
Rerun with a larger ``--steps`` on the same ``--work`` to continue (the cosine schedule is recomputed).

``toy-alt`` is the EMA snapshot at ``--alt-step``: a second, differently (shorter) trained model of the same world,
used as the "alternative model" for regularisation images. Interrupt at any time and rerun to resume from ``--work``.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from subjectgen_diffusers.atomic_io import atomic_write, atomic_write_json
from subjectgen_diffusers.errors import SubjectgenError

from .architecture import assemble_pipeline, save_pipeline, toy_text_encoder, toy_train_scheduler, toy_unet, toy_vae
from .world import render_array, sample_specs

logger = logging.getLogger(__name__)


@dataclass
class BaseTrainConfig:
    out: str = "training/toy/weights/toy-base"
    alt_out: str | None = "training/toy/weights/toy-alt"
    work: str = "/tmp/toy-base-work"
    seed: int = 0
    num_images: int = 16000
    vae_steps: int = 800
    vae_batch: int = 32
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6  # weight of the L2 pull on the latent means
    steps: int = 2800
    alt_step: int = 1400
    batch_size: int = 48
    lr: float = 1e-3
    warmup: int = 200
    caption_dropout: float = 0.1
    offset_noise: float = 0.2  # per-channel constant noise (Guttenberg 2023) so global colour must come from text
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    threads: int = 1

    @classmethod
    def from_dict(cls, data: dict) -> BaseTrainConfig:
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise SubjectgenError(f"unknown toy base training keys {unknown}; allowed keys are {sorted(allowed)}.")
        return cls(**data)


def render_dataset(config: BaseTrainConfig) -> tuple[torch.Tensor, list[str]]:
    """All training images as a [-1, 1] float tensor and their captions."""
    specs = sample_specs(config.num_images, config.seed)
    pixels = np.stack([render_array(s) for s in tqdm(specs, desc="render world", mininterval=10)])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return images, [s.caption() for s in specs]


def tokenize(captions: list[str]) -> torch.Tensor:
    from subjectgen_diffusers.tokenizer import build_clip_tokenizer

    tokenizer = build_clip_tokenizer()
    return tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def make_deterministic(vae) -> None:
    """Pin the posterior's log-variance at -30 (std 3e-7): ``latent_dist.sample()`` then equals its mean, so every
    trainer that samples latents (as SD trainers do) sees the latents the decoder was trained on. A CPU-sized run
    cannot afford to learn small variances the slow way; a sampled std of ~1 blurred every small detail."""
    channels = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[channels:] = 0.0
        vae.quant_conv.bias[channels:] = -30.0


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
        # L1 + L2 keeps small saturated details (the marks, the irises) sharper than L2 alone.
        loss = F.l1_loss(recon, batch) + F.mse_loss(recon, batch) + config.kl_weight * posterior.mean.pow(2).mean()
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


def lr_factor(step: int, config: BaseTrainConfig) -> float:
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _save_state(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def train_base(config: BaseTrainConfig) -> Path:
    torch.set_num_threads(config.threads)
    work = Path(config.work)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / "base_train_config.json", asdict(config))
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    images, captions = render_dataset(config)
    vae_path = work / "vae"
    if (vae_path / "config.json").is_file():
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(vae_path).eval().requires_grad_(False)
    else:
        vae = train_vae(config, images, generator)
        means, _ = encode_dataset(vae, images[:2048])
        vae.register_to_config(scaling_factor=float(1.0 / means.std()))
        vae.save_pretrained(vae_path)
    scale = vae.config.scaling_factor
    means, _ = encode_dataset(vae, images)
    ids = tokenize(captions)
    empty = tokenize([""])[0]
    logger.info("latent scaling factor %.4f", scale)

    unet, text_encoder = toy_unet(), toy_text_encoder()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01)
    scheduler = toy_train_scheduler()
    step = 0
    state_path = work / "state.pt"
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        optimizer.load_state_dict(state["optimizer"])
        ema = state["ema"]
        generator.set_state(state["generator"])
        step = state["step"]
        logger.info("resumed at step %d", step)

    def export(folder: str) -> None:
        snapshot_unet, snapshot_text = toy_unet(), toy_text_encoder()
        snapshot_params = list(snapshot_unet.parameters()) + list(snapshot_text.parameters())
        with torch.no_grad():
            for target, source in zip(snapshot_params, ema):
                target.copy_(source)
        save_pipeline(assemble_pipeline(vae, snapshot_text, snapshot_unet), folder)
        logger.info("saved %s", folder)

    bar = tqdm(range(step, config.steps), desc="unet+text", mininterval=30, initial=step, total=config.steps)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_factor(step, config)
        index = torch.randint(len(means), (config.batch_size,), generator=generator)
        latents = means[index] * scale
        batch_ids = ids[index].clone()
        drop = torch.rand(config.batch_size, generator=generator) < config.caption_dropout
        batch_ids[drop] = empty
        noise = torch.randn(latents.shape, generator=generator)
        if config.offset_noise:
            # SD's schedule leaves ~7% signal at t=999; on 8x8 latents the leaked mean colour let the model ignore
            # the caption's background (Lin et al. 2024). Offset noise hides the mean, so the text must give it.
            noise = noise + config.offset_noise * torch.randn((*latents.shape[:2], 1, 1), generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (config.batch_size,), generator=generator)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        hidden = text_encoder(batch_ids)[0]
        loss = F.mse_loss(unet(noisy, timesteps, hidden).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        done = step + 1
        if config.alt_out and done == config.alt_step:
            export(config.alt_out)
        if done % config.checkpoint_every == 0 or done == config.steps:
            _save_state(state_path, {
                "unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                "optimizer": optimizer.state_dict(), "ema": ema, "generator": generator.get_state(), "step": done,
            })
    export(config.out)
    return Path(config.out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in fields(BaseTrainConfig):
        kind = {"int": int, "float": float}.get(str(f.type), str)
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    train_base(BaseTrainConfig.from_dict(vars(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
