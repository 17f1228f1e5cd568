"""The toy SDXL model's architecture: Stable Diffusion XL's classes at toy size, on the toy world.

What makes it SDXL, as ``StableDiffusionXLPipeline`` and the ``sdxl`` model family read it: two CLIP text encoders
(``CLIPTextModel`` and ``CLIPTextModelWithProjection``, each read by the real SD tokenizer) whose penultimate hidden
states are concatenated into the UNet's context, and a UNet with SDXL's added conditioning
(``addition_embed_type="text_time"``: the second encoder's projected pooled text plus the six size/crop time ids, each
id embedded in ``ADDITION_TIME_EMBED_DIM`` sinusoids). Widths: each encoder 16 wide and 3 layers deep (the
penultimate layer, the one SDXL reads, is then 2 layers deep like the SD toy's text encoder), so the context is 32
wide as in the SD toy and the UNet (same blocks, same 1.7 M-parameter body) costs about the same to train.

The VAE, the noise schedule (SD's betas rescaled to zero terminal SNR, v-prediction) and the world are the SD toy's
(``architecture.py``); the shipped toy-xl-base reuses the SD toy's trained VAE (``train_base --vae-from``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from subjectgen_diffusers.tokenizer import MODEL_MAX_LENGTH, build_clip_tokenizer

from .architecture import SCHEDULE, toy_unet

TEXT_HIDDEN = 16  # each encoder; the UNet's context is both side by side
TEXT_LAYERS = 3
ADDITION_TIME_EMBED_DIM = 8
NUM_TIME_IDS = 6  # original size (h, w) + crop top-left (y, x) + target size (h, w)


def _text_config(**extra) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408, hidden_size=TEXT_HIDDEN, intermediate_size=TEXT_HIDDEN * 4, num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407, projection_dim=TEXT_HIDDEN, hidden_act="quick_gelu", **extra,
    )


def toy_xl_text_encoders() -> dict[str, torch.nn.Module]:
    """``text_encoder`` (CLIP-L's role) and ``text_encoder_2`` (CLIP-G's role: its projected pooled output is the
    UNet's ``text_embeds``), created in that order from the global RNG."""
    return {"text_encoder": CLIPTextModel(_text_config()),
            "text_encoder_2": CLIPTextModelWithProjection(_text_config())}


def toy_xl_unet() -> UNet2DConditionModel:
    """The SD toy's UNet body with SDXL's context width (both encoders) and added text/time conditioning."""
    return toy_unet(
        2 * TEXT_HIDDEN, addition_embed_type="text_time", addition_time_embed_dim=ADDITION_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=TEXT_HIDDEN + NUM_TIME_IDS * ADDITION_TIME_EMBED_DIM,
    )


def assemble_xl_pipeline(vae: AutoencoderKL, text_encoder: CLIPTextModel, text_encoder_2: CLIPTextModelWithProjection,
                         unet: UNet2DConditionModel) -> StableDiffusionXLPipeline:
    """A StableDiffusionXLPipeline around the toy components. ``force_zeros_for_empty_prompt=False``: the empty
    prompt is encoded (the model was trained on encoded empty captions for classifier-free guidance, as SD 1.x is),
    not replaced by zeros."""
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=build_clip_tokenizer(),
        tokenizer_2=build_clip_tokenizer(), unet=unet, scheduler=DDIMScheduler(**SCHEDULE),
        force_zeros_for_empty_prompt=False, add_watermarker=False,
    )


def save_slim_tokenizer(tokenizer, folder: str | Path) -> None:
    """Write a CLIP tokenizer as ``vocab.json`` + ``merges.txt`` + ``tokenizer_config.json`` (1.4 MB) instead of the
    fast tokenizer's ``tokenizer.json`` (3.6 MB); ``CLIPTokenizer.from_pretrained`` builds the same tokenizer from
    them. Two tokenizers in the fast format alone would take half of the toy SDXL's 16 MB."""
    from subjectgen_diffusers.tokenizer import clip_vocab_and_merges

    folder = Path(folder)
    for name in ("tokenizer.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    vocab, merges = clip_vocab_and_merges()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                       encoding="utf-8")
    config = {"tokenizer_class": type(tokenizer).__name__, "model_max_length": MODEL_MAX_LENGTH,
              "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
              "pad_token": "<|endoftext|>", "do_lower_case": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
