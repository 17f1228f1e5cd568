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


SDXL_TEXT_HIDDEN = (32, 48)  # text_encoder (CLIP-L's place, 768 in SDXL), text_encoder_2 (OpenCLIP-G's, 1280)
SDXL_TIME_EMBED = 8  # addition_time_embed_dim (256 in SDXL); 6 time ids: original size, crop top-left, target size


def tiny_sdxl_unet() -> UNet2DConditionModel:
    """SDXL's UNet layout at toy size: no attention in the first level, two resnets per level (so the ldm/SGM block
    numbering of SDXL LoRAs is the real one), two transformer blocks in the attention level, and the "text_time"
    added conditioning fed by encoder 2's pooled output plus the six size/crop ids."""
    hidden_1, hidden_2 = SDXL_TEXT_HIDDEN
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=hidden_1 + hidden_2,
        attention_head_dim=8,
        norm_num_groups=8,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_embed_type_num_heads=8,
        addition_time_embed_dim=SDXL_TIME_EMBED,
        projection_class_embeddings_input_dim=hidden_2 + 6 * SDXL_TIME_EMBED,
    )


def build_tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """A random tiny SDXL pipeline: two text encoders of different widths (32 and 48, so that mixing them up fails
    loudly), both with the real CLIP tokenizer, the UNet's cross-attention fed their concatenation (80) and its added
    conditioning encoder 2's pooled output (48) plus 6 time ids x 8."""
    torch.manual_seed(seed)
    hidden_1, hidden_2 = SDXL_TEXT_HIDDEN
    return StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(hidden_1),
        text_encoder_2=tiny_text_encoder(hidden_2, projection=True),
        tokenizer=build_clip_tokenizer(),
        tokenizer_2=build_clip_tokenizer(),
        unet=tiny_sdxl_unet(),
        scheduler=tiny_scheduler(),
        force_zeros_for_empty_prompt=True,
    )


def save_tiny_sd(path: str | Path, seed: int = 0, **kwargs) -> Path:
    """Write a tiny SD pipeline in diffusers format (safetensors) and return its folder."""
    path = Path(path)
    build_tiny_sd_pipeline(seed, **kwargs).save_pretrained(path)
    return path


def save_tiny_sdxl(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny SDXL pipeline as a stock ``StableDiffusionXLPipeline`` folder and return it."""
    path = Path(path)
    build_tiny_sdxl_pipeline(seed).save_pretrained(path)
    return path
