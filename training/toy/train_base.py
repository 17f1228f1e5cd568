"""Train the toy base model from scratch on the toy world (reproducible, resumable, CPU-sized).

Three stages, as Stable Diffusion was built (Rombach et al. 2022) and then extended by its users: (1) the VAE as an
autoencoder (L1 + L2 reconstruction, a tiny L2 pull on the latents, cosine learning-rate decay, log-variance pinned
so sampling returns the mean), whose latent scale gives ``scaling_factor`` (SD's 0.18215 was found the same way,
1/std); (2) the UNet and the text encoder jointly on cached latents with the v-prediction loss under a zero-terminal-SNR
schedule (see ``architecture.py``), 10% empty captions for classifier-free guidance (Ho & Salimans 2022) and an EMA of
the weights, exported as ``toy-base``; (3) the *alternative model*: a rank-4 LoRA on the base UNet's attention
(peft, saved by diffusers' LoRA writer) fine-tuned on the same world drawn in a second style (no anti-aliasing, hard
pixel edges), exported as ``toy-alt-lora`` -- the toy stand-in for "an SDXL finetune plus a LoRA".

Reproduce the shipped weights (defaults = the shipped run; ``--work`` keeps a resumable state, rerun to resume)::

    nice -n 5 python -m subjectgen_training.toy.train_base --threads 2

About 27 minutes on 2 cores (VAE 7, UNet + text encoder 18, LoRA 2); on the machine that trained them a rerun
gives every shipped file bit for bit (see ``training/toy/README.md``).

``--model sdxl`` builds the toy SDXL (``toy-xl-base``, ``toy-xl-alt-lora``; ``architecture_xl.py``) with the same
world, captions, stages and loop: the UNet is conditioned by the model family's ``unet_conditioning`` (both text
encoders, pooled text and time ids), as SDXL's pipeline conditions it. ``--vae-from`` reuses a trained toy VAE and
``--unet-from`` starts the UNet from a trained toy UNet (the shipped toy SDXL: the SD toy's; README).
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

from .architecture import toy_train_scheduler
from .train_vae import encode_dataset, load_or_train_vae
from .variants import VARIANTS, ToyVariant, get_variant
from .world import SIZE, SUPERSAMPLE, caption_for, random_omissions, render_array, sample_specs

logger = logging.getLogger(__name__)


@dataclass
class BaseTrainConfig:
    model: str = "sd"  # the architecture: "sd" (toy-base) or "sdxl" (toy-xl-base), see variants.py
    # "" = the model's own: training/toy/weights/<its weights>, .../<its LoRA>, /tmp/<its weights>-work
    out: str = ""
    alt_lora_out: str | None = ""  # None: no LoRA stage
    work: str = ""
    vae_from: str = ""  # a trained toy VAE folder to use instead of stage 1 ("" = train one)
    unet_from: str = ""  # a trained toy UNet folder whose same-named weights start stage 2's UNet ("" = from scratch)
    seed: int = 0
    num_images: int = 16000
    vae_num_images: int = 6000  # the VAE trains on the first this-many images
    vae_steps: int = 2400
    vae_batch: int = 16
    vae_lr: float = 3e-3
    vae_detail_weight: float = 4.0
    kl_weight: float = 1e-6  # weight of the L2 pull on the latent means
    steps: int = 2500
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 200
    caption_dropout: float = 0.1
    name_probability: float = 0.7  # each caption part is named with this probability (partial captions)
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    alt_lora_steps: int = 300
    alt_lora_rank: int = 4
    alt_lora_lr: float = 1e-3
    alt_num_images: int = 4000
    threads: int = 1

    @classmethod
    def from_dict(cls, data: dict) -> BaseTrainConfig:
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise SubjectgenError(f"unknown toy base training keys {unknown}; allowed keys are {sorted(allowed)}.")
        return cls(**data)

    def __post_init__(self) -> None:
        if self.model not in VARIANTS:
            raise SubjectgenError(f"unknown toy model {self.model!r}; choose one of {sorted(VARIANTS)}.")
        variant = get_variant(self.model)
        weights = "training/toy/weights"
        self.out = self.out or f"{weights}/{variant.weights}"
        if self.alt_lora_out == "":
            self.alt_lora_out = f"{weights}/{variant.lora_weights}"
        self.work = self.work or f"/tmp/{variant.weights}-work"


def render_dataset(config: BaseTrainConfig, count: int | None = None, seed_offset: int = 0,
                   supersample: int = SUPERSAMPLE) -> tuple[torch.Tensor, list[str]]:
    """All training images as a [-1, 1] float tensor and their captions."""
    specs = sample_specs(count or config.num_images, config.seed + seed_offset)
    pixels = np.stack([render_array(s, supersample) for s in tqdm(specs, desc="render world", mininterval=10)])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    rng = np.random.default_rng(config.seed + seed_offset + 10_000)
    return images, [caption_for(s, omit=random_omissions(rng, config.name_probability)) for s in specs]


def tokenize(captions: list[str]) -> torch.Tensor:
    from subjectgen_diffusers.tokenizer import build_clip_tokenizer

    tokenizer = build_clip_tokenizer()
    return tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def lr_factor(step: int, config: BaseTrainConfig) -> float:
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _save_state(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def diffusion_loss(unet, condition, scheduler, latents: torch.Tensor, ids: torch.Tensor, empty: torch.Tensor,
                   config: BaseTrainConfig, generator: torch.Generator) -> torch.Tensor:
    """v-prediction loss on one batch, with ``caption_dropout`` of the captions replaced by the empty one;
    ``condition(ids)``: the UNet's conditioning (:func:`conditioner`)."""
    batch_ids = ids.clone()
    batch_ids[torch.rand(len(ids), generator=generator) < config.caption_dropout] = empty
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = scheduler.get_velocity(latents, noise, timesteps)
    return F.mse_loss(unet(noisy, timesteps, **condition(batch_ids).unet_kwargs()).sample, target)


def conditioner(variant: ToyVariant, encoders: dict[str, torch.nn.Module]):
    """``ids -> UNetConditioning`` as the variant's pipeline computes it (its model family's ``unet_conditioning``),
    every encoder reading the same SD-tokenizer ids, at the toy world's size (SDXL's time ids)."""
    from types import SimpleNamespace

    family = variant.model_family()
    parts = SimpleNamespace(**encoders)
    size = (SIZE, SIZE)
    return lambda ids: family.unet_conditioning(parts, [ids] * len(encoders), original_size=size, target_size=size)


def warm_start(unet, folder: str) -> None:
    """Start ``unet`` from a trained toy UNet's weights wherever a name and shape match (the toy SDXL from the SD
    toy: the same blocks and context width). What only ``unet`` has (SDXL's ``add_embedding`` of the pooled text and
    time ids) keeps its fresh weights, with its last layer zeroed so the start draws as the trained UNet does; any
    other difference is an error."""
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    if len(files) != 1:
        raise SubjectgenError(f"--unet-from {folder}: expected one .safetensors file of a diffusers UNet folder.")
    trained = load_file(str(files[0]))
    own = unet.state_dict()
    mismatched = sorted(k for k in trained if k not in own or own[k].shape != trained[k].shape)
    missing = sorted(k for k in own if k not in trained and not k.startswith("add_embedding."))
    if mismatched or missing:
        raise SubjectgenError(f"--unet-from {folder} does not fit this UNet: {(mismatched + missing)[:4]} ...")
    unet.load_state_dict({k: v.float() for k, v in trained.items()}, strict=False)
    if hasattr(unet, "add_embedding"):
        with torch.no_grad():
            unet.add_embedding.linear_2.weight.zero_()
            unet.add_embedding.linear_2.bias.zero_()


def train_unet_and_text(config: BaseTrainConfig, vae, images, captions, generator: torch.Generator, work: Path):
    """Stage 2; returns the EMA UNet and the text encoders ``{attribute name: encoder}``."""
    scale = vae.config.scaling_factor
    means, _ = encode_dataset(vae, images)
    ids, empty = tokenize(captions), tokenize([""])[0]
    logger.info("latent scaling factor %.4f", scale)
    variant = get_variant(config.model)
    unet = variant.make_unet()
    encoders = variant.make_text_encoders()
    if config.unet_from:
        warm_start(unet, config.unet_from)
    params = list(unet.parameters()) + [p for encoder in encoders.values() for p in encoder.parameters()]
    ema = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01)
    scheduler = toy_train_scheduler()
    step = 0
    state_path = work / "state.pt"
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        unet.load_state_dict(state["unet"])
        for name, encoder in encoders.items():
            encoder.load_state_dict(state[name])
        optimizer.load_state_dict(state["optimizer"])
        ema = state["ema"]
        generator.set_state(state["generator"])
        step = state["step"]
        logger.info("resumed at step %d", step)
    condition = conditioner(variant, encoders)
    bar = tqdm(range(step, config.steps), desc="unet+text", mininterval=30, initial=step, total=config.steps)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_factor(step, config)
        index = torch.randint(len(means), (config.batch_size,), generator=generator)
        loss = diffusion_loss(unet, condition, scheduler, means[index] * scale, ids[index], empty, config, generator)
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
        if done % config.checkpoint_every == 0 or done == config.steps:
            _save_state(state_path, {
                "unet": unet.state_dict(), **{name: encoder.state_dict() for name, encoder in encoders.items()},
                "optimizer": optimizer.state_dict(), "ema": ema, "generator": generator.get_state(), "step": done,
            })
    with torch.no_grad():
        for target, source in zip(params, ema):
            target.copy_(source)
    return unet.eval().requires_grad_(False), {name: e.eval().requires_grad_(False) for name, e in encoders.items()}


def train_alt_lora(config: BaseTrainConfig, vae, unet, encoders: dict, generator: torch.Generator) -> Path:
    """Stage 3: a LoRA on the base UNet's attention, fine-tuned on the world drawn without anti-aliasing."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    images, captions = render_dataset(config, config.alt_num_images, seed_offset=1, supersample=1)
    means, _ = encode_dataset(vae, images)
    ids, empty = tokenize(captions), tokenize([""])[0]
    unet.add_adapter(LoraConfig(r=config.alt_lora_rank, lora_alpha=config.alt_lora_rank, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.alt_lora_lr)
    scheduler = toy_train_scheduler()
    variant = get_variant(config.model)
    condition = conditioner(variant, encoders)
    unet.train()
    for step in tqdm(range(config.alt_lora_steps), desc="alt lora", mininterval=30):
        index = torch.randint(len(means), (config.batch_size,), generator=generator)
        loss = diffusion_loss(unet, condition, scheduler, means[index] * vae.config.scaling_factor, ids[index],
                              empty, config, generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    out = Path(config.alt_lora_out)
    tmp = out.with_name(out.name + ".tmp")
    variant.model_family().pipeline_class().save_lora_weights(str(tmp), unet_lora_layers={k: v.half() for k, v in layers.items()})
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    unet.delete_adapters("default_0") if hasattr(unet, "delete_adapters") else None
    return out


def train_base(config: BaseTrainConfig) -> Path:
    torch.set_num_threads(config.threads)
    work = Path(config.work)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / "base_train_config.json", asdict(config))
    images, captions = render_dataset(config)
    # Each stage starts from its own seeded RNGs, so a run that reuses a trained VAE from --work draws the same
    # batches and initial weights as one that trains it first.
    torch.manual_seed(config.seed)
    vae = load_or_train_vae(config, images[: config.vae_num_images], torch.Generator().manual_seed(config.seed), work)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    unet, encoders = train_unet_and_text(config, vae, images, captions, generator, work)
    variant = get_variant(config.model)
    variant.save(variant.assemble(vae, encoders, unet), config.out)
    logger.info("saved %s", config.out)
    if config.alt_lora_out:
        logger.info("saved %s", train_alt_lora(config, vae, unet, encoders, generator))
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
