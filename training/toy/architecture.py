"""The toy base model's architecture: Stable Diffusion 1.5's classes at toy size.

Same diffusers/transformers classes as SD 1.5 (``AutoencoderKL``, ``CLIPTextModel`` read by the real SD tokenizer,
``UNet2DConditionModel`` with cross-attention, SD 1.5's DDIM/DDPM noise schedule), scaled down so that it trains on a
CPU: 32 px images, a VAE with three blocks (latent factor 4) and 16 latent channels (8x8x16 latents: with SD's 4
channels a CPU-sized VAE blurred away the small details that make a subject, as SD3/FLUX-style 16-channel latents
avoid), a 2-layer 32-wide text encoder and a 0.8 M-parameter UNet. Latent diffusion as in Rombach et al. 2022 (LDM), ε-prediction as in Ho et al. 2020 (DDPM).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from subjectgen_diffusers.tokenizer import build_clip_tokenizer

from .world import SIZE

TEXT_HIDDEN = 32
LATENT_SIZE = SIZE // 4
LATENT_CHANNELS = 16
SCHEDULE = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1,
    clip_sample=False, set_alpha_to_one=False,
)


def toy_vae(scaling_factor: float = 1.0) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32), sample_size=SIZE, scaling_factor=scaling_factor,
    )


def toy_text_encoder() -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=TEXT_HIDDEN, intermediate_size=TEXT_HIDDEN * 4, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407, projection_dim=TEXT_HIDDEN, hidden_act="quick_gelu",
    ))


def toy_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN, attention_head_dim=8, norm_num_groups=8,
    )


def toy_train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**{k: v for k, v in SCHEDULE.items() if k != "set_alpha_to_one"})


def assemble_pipeline(vae: AutoencoderKL, text_encoder: CLIPTextModel, unet: UNet2DConditionModel) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline (no safety checker: cartoon faces) around the toy components."""
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=build_clip_tokenizer(), unet=unet,
        scheduler=DDIMScheduler(**SCHEDULE), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline(pipe: StableDiffusionPipeline, folder: str | Path) -> Path:
    """Write the pipeline as a diffusers folder of safetensors files (fp32: ~10 MB, loads without a dtype)."""
    folder = Path(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
