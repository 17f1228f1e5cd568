"""The shipped toy base model: a real SD-architecture diffusers folder that draws what its captions ask for."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from subjectgen_training.toy import detectors, world
from subjectgen_training.toy.models import WEIGHTS, model_path

BASE = WEIGHTS / "toy-base"
ALT_LORA = WEIGHTS / "toy-alt-lora"
pytestmark = pytest.mark.skipif(
    not (BASE / "model_index.json").is_file(),
    reason="toy weights not shipped yet: train them with `python -m subjectgen_training.toy.train_base`",
)


def load(folder):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, prompts: list[str], seed: int = 0, steps: int = 20) -> list:
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    return pipe(prompts, num_inference_steps=steps, guidance_scale=4.0, height=world.SIZE, width=world.SIZE,
                generator=generators).images


def test_shipped_weights_are_small_safetensors_files():
    files = [p for p in WEIGHTS.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}]
    base_files = [p for p in files if BASE in p.parents]
    assert {p.parent.name for p in base_files if p.suffix == ".safetensors"} == {"unet", "vae", "text_encoder"}
    assert sum(p.stat().st_size for p in base_files) < 16 * 2**20
    assert (ALT_LORA / "pytorch_lora_weights.safetensors").stat().st_size < 2**20
    assert model_path("toy-base") == str(BASE) and model_path("toy-alt-lora") == str(ALT_LORA)


def test_base_is_stable_diffusion_architecture_with_the_real_tokenizer():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    pipe = load(BASE)
    assert isinstance(pipe.vae, AutoencoderKL) and isinstance(pipe.unet, UNet2DConditionModel)
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert len(pipe.tokenizer) == 49408 and pipe.tokenizer.model_max_length == 77
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.vae_scale_factor * pipe.unet.config.sample_size == world.SIZE


def test_base_draws_what_the_caption_names(tmp_path):
    """Prompt-following of the base model through the project's generator, read by the pixel rules on 30 of the 90
    fully captioned requests (the full table is in the README)."""
    from subjectgen_training.toy.detector_check import generated_table

    rates = generated_table(seed=7, every=3, work=str(tmp_path))
    print(rates)
    assert rates["images"] == 30
    assert rates["head"] >= 0.9, rates
    assert rates["background"] >= 0.8, rates
    assert rates["accessory"] >= 0.7, rates
    assert rates["skin"] >= 0.7 and rates["hair_colour"] >= 0.6 and rates["hair_style"] >= 0.6, rates


def test_the_alternative_model_is_the_base_plus_a_style_lora_that_still_draws_the_world():
    prompts = ["a smiling round cartoon face with tan skin, short red hair and green eyes, on a green background"] * 4
    base_images = sample(load(BASE), prompts)
    alt = load(BASE)
    alt.load_lora_weights(str(ALT_LORA))
    alt_images = sample(alt, prompts)
    difference = np.mean([np.abs(np.asarray(a, float) - np.asarray(b, float)).mean() for a, b in zip(alt_images, base_images)])
    assert difference > 1.0, difference  # the LoRA changes the pictures (1.6 of 255 per pixel when shipped) ...
    readings = [detectors.read_face(image) for image in alt_images]
    assert np.mean([r.head_found for r in readings]) >= 0.5  # ... and they are still faces of the world
    assert np.mean([r.background == "green" for r in readings]) >= 0.5
