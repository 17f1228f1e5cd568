"""The benchmarks' models, built offline with random weights at real shapes (``tiny``, ``sd15``, ``sdxl``), and their
photo folders (:mod:`subjectgen_training.benchmarks.train_bench`, :mod:`~subjectgen_training.benchmarks.sdxl_memory`)."""

from __future__ import annotations

from pathlib import Path

import torch


def clip_text_config(width: int, layers: int, heads: int, act: str):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                          num_attention_heads=heads, max_position_embeddings=77, hidden_act=act, projection_dim=width,
                          bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)


def sdxl_unet_config() -> dict:
    """``unet/config.json`` of stabilityai/stable-diffusion-xl-base-1.0 (the keys that shape it)."""
    return dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                use_linear_projection=True, addition_embed_type="text_time", addition_embed_type_num_heads=64,
                addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)


def broadcast_weights(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter becomes one random value broadcast to its shape (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None:
                value = torch.randn(1, generator=generator) * 0.02
                sub._parameters[name] = torch.nn.Parameter(value.expand(param.shape), requires_grad=False)
        for name, buffer in list(sub._buffers.items()):  # built on the meta device: CLIP's position ids
            if buffer is not None and buffer.is_meta:
                if name != "position_ids":
                    raise ValueError(f"cannot materialise buffer {name!r}")
                sub._buffers[name] = torch.arange(buffer.shape[-1]).expand(buffer.shape)
    return module


def build_modules(model: str, broadcast: bool = False):
    """``(family, tokenizers, text_encoders, vae, unet, scheduler_config)`` of a benchmark model, random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from subjectgen_diffusers.families import get_family
    from subjectgen_diffusers.tokenizer import build_clip_tokenizer
    from subjectgen_training.models import tiny_models

    torch.manual_seed(0)
    schedule = tiny_models.tiny_scheduler().config
    if model == "tiny":
        return (get_family("sd1"), {"tokenizer": build_clip_tokenizer()}, {"text_encoder": tiny_models.tiny_text_encoder()},
                tiny_models.tiny_vae(), tiny_models.tiny_unet(), schedule)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512)
    if model == "sdxl":
        vae.register_to_config(scaling_factor=0.13025, sample_size=1024)
        with torch.device("meta" if broadcast else "cpu"):  # broadcast: the real weights need never exist
            encoders = {"text_encoder": CLIPTextModel(clip_text_config(768, 12, 12, "quick_gelu")),
                        "text_encoder_2": CLIPTextModelWithProjection(clip_text_config(1280, 32, 20, "gelu"))}
            unet = UNet2DConditionModel(**sdxl_unet_config())
        if broadcast:
            for module in (*encoders.values(), unet):
                broadcast_weights(module)
        return (get_family("sdxl"), {"tokenizer": build_clip_tokenizer(), "tokenizer_2": build_clip_tokenizer()},
                encoders, vae, unet, schedule)
    text = CLIPTextModel(clip_text_config(768, 12, 12, "quick_gelu"))
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
    return get_family("sd1"), {"tokenizer": build_clip_tokenizer()}, {"text_encoder": text}, vae, unet, schedule


def make_folders(root: Path) -> tuple[Path, Path]:
    from PIL import Image
    from skimage import data

    photos, reg = root / "photos", root / "reg"
    photos.mkdir()
    reg.mkdir()
    image = Image.fromarray(data.astronaut())
    for i in range(4):
        image.rotate(3 * i).save(photos / f"p{i}.png")
    for i in range(2):
        image.transpose(Image.FLIP_LEFT_RIGHT).rotate(4 * i).save(reg / f"r{i}.png")
    return photos, reg
