"""Tiny Stable Diffusion (1.x architecture) and SDXL pipelines built in-process from configs.

They use the same diffusers/transformers classes as the real models, random weights and the real CLIP tokenizer, so
every code path (loading, training, generation, regularisation) runs offline on a CPU in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from subjectgen_diffusers.tokenizer import build_clip_tokenizer

TEXT_HIDDEN = 32


def tiny_scheduler() -> DDIMScheduler:
    """DDIM with Stable Diffusion 1.5's noise schedule."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        num_train_timesteps=1000,
    )


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.18215,
    )


def tiny_text_encoder(hidden: int = TEXT_HIDDEN, projection: bool = False) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        projection_dim=hidden,
        hidden_act="quick_gelu",
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def tiny_unet(cross_attention_dim: int = TEXT_HIDDEN, **extra) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
        **extra,
    )


def build_tiny_sd_pipeline(seed: int = 0, text_hidden: int = TEXT_HIDDEN) -> StableDiffusionPipeline:
    """A random tiny SD 1.x pipeline (0.8 M-parameter UNet). ``text_hidden`` != 32 mimics another model family."""
    torch.manual_seed(seed)
    return StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(text_hidden),
        tokenizer=build_clip_tokenizer(),
        unet=tiny_unet(text_hidden),
        scheduler=tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """A random tiny SDXL pipeline: two text encoders and the added time/text embeddings."""
    torch.manual_seed(seed)
    unet = tiny_unet(
        cross_attention_dim=64,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,
        transformer_layers_per_block=(1, 1),
        use_linear_projection=True,
    )
    return StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(32),
        text_encoder_2=tiny_text_encoder(32, projection=True),
        tokenizer=build_clip_tokenizer(),
        tokenizer_2=build_clip_tokenizer(),
        unet=unet,
        scheduler=tiny_scheduler(),
        force_zeros_for_empty_prompt=True,
    )


def save_tiny_sd(path: str | Path, seed: int = 0, **kwargs) -> Path:
    """Write a tiny SD pipeline in diffusers format (safetensors) and return its folder."""
    path = Path(path)
    build_tiny_sd_pipeline(seed, **kwargs).save_pretrained(path)
    return path


def save_tiny_sdxl(path: str | Path, seed: int = 0) -> Path:
    path = Path(path)
    build_tiny_sdxl_pipeline(seed).save_pretrained(path)
    return path
