"""The toy base model's architecture: Stable Diffusion's classes at toy size.

Same diffusers/transformers classes as SD 1.5 (``AutoencoderKL``, ``CLIPTextModel`` read by the real SD tokenizer,
``UNet2DConditionModel`` with cross-attention, DDIM sampling), scaled down so that it trains on a CPU: 32 px images, a
VAE with two blocks (latent factor 2, 8 latent channels, no mid-block attention: 16x16x8 latents; a factor-4
CPU-sized VAE blurred away the 4-pixel marks that make a subject), a 2-layer 32-wide text encoder and a
1.7 M-parameter UNet whose cross-attention sits at 8x8 and 4x4.

The noise schedule is SD 1.5's (scaled-linear betas 0.00085-0.012) rescaled to zero terminal SNR, with v-prediction
and "trailing" timestep spacing, the fix of Lin et al. 2024 ("Common Diffusion Noise Schedules and Sample Steps are
Flawed") that diffusers ships as ``rescale_betas_zero_snr``. Under SD 1.5's own schedule a 16x16 latent keeps ~7% of
its signal at t=999, so the mean colour leaks through the noise and a small model learns to ignore the caption; with
ε-prediction the text also barely changes the loss at high noise. Trainers read ``prediction_type`` from the model's
scheduler, as they do for SD 2.x's v-prediction checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from subjectgen_diffusers.tokenizer import build_clip_tokenizer

from .world import SIZE

TEXT_HIDDEN = 32
LATENT_FACTOR = 2
LATENT_SIZE = SIZE // LATENT_FACTOR
LATENT_CHANNELS = 8
SCHEDULE = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing", steps_offset=1,
    clip_sample=False,
)


def toy_vae(scaling_factor: float = 1.0) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64), sample_size=SIZE, scaling_factor=scaling_factor, mid_block_add_attention=False,
    )


def toy_text_encoder() -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=TEXT_HIDDEN, intermediate_size=TEXT_HIDDEN * 4, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407, projection_dim=TEXT_HIDDEN, hidden_act="quick_gelu",
    ))


def toy_unet(cross_attention_dim: int = TEXT_HIDDEN, **added_conditioning) -> UNet2DConditionModel:
    """The toy UNet body; the toy SDXL passes its wider context and SDXL's added text/time conditioning."""
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        block_out_channels=(32, 64, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=2, norm_num_groups=8, **added_conditioning,
    )


def toy_train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE)


def assemble_pipeline(vae: AutoencoderKL, text_encoder: CLIPTextModel, unet: UNet2DConditionModel) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline (no safety checker: cartoon faces) around the toy components."""
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=build_clip_tokenizer(), unet=unet,
        scheduler=DDIMScheduler(**SCHEDULE), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline(pipe: StableDiffusionPipeline, folder: str | Path) -> Path:
    """Write the pipeline as a diffusers folder of safetensors files: UNet and VAE in fp16 (half the size; diffusers
    loads them as fp32 unless a ``torch_dtype`` is given), the text encoder in fp32 (transformers keeps a
    checkpoint's dtype, and a half-precision text encoder would feed fp16 states to the fp32 UNet)."""
    folder = Path(folder)
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # the cast below warns about modules that must stay fp32; none here
    try:
        pipe.unet.to(torch.float16)
        pipe.vae.to(torch.float16)
        pipe.save_pretrained(folder, safe_serialization=True)
    finally:
        pipe.unet.to(torch.float32)
        pipe.vae.to(torch.float32)
        diffusers_logging.set_verbosity(verbosity)
    return folder


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
