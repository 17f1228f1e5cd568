"""The shipped toy base model: a real SD-architecture diffusers folder that draws what its captions ask for."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.toy import detectors, world
from training.toy.experiment import WEIGHTS, model_path

BASE = WEIGHTS / "toy-base"
ALT = WEIGHTS / "toy-alt"
pytestmark = pytest.mark.skipif(
    not (BASE / "model_index.json").is_file(),
    reason="toy weights not shipped yet: train them with `python -m training.toy.train_base`",
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


@pytest.mark.parametrize("folder", [BASE, ALT], ids=["toy-base", "toy-alt"])
def test_shipped_weights_are_small_safetensors_diffusers_folders(folder):
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}]
    assert {p.parent.name for p in files if p.suffix == ".safetensors"} == {"unet", "vae", "text_encoder"}
    assert sum(p.stat().st_size for p in files) < 20 * 2**20
    assert model_path(folder.name) == str(folder)


def test_base_is_stable_diffusion_architecture_with_the_real_tokenizer():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    pipe = load(BASE)
    assert isinstance(pipe.vae, AutoencoderKL) and isinstance(pipe.unet, UNet2DConditionModel)
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert len(pipe.tokenizer) == 49408 and pipe.tokenizer.model_max_length == 77
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.vae_scale_factor * pipe.unet.config.sample_size == world.SIZE


def test_base_draws_the_prompted_background_and_accessory():
    """Prompt-following of the base model, measured by the pixel rules (the numbers are in the report)."""
    pipe = load(BASE)
    requests = [(bg, acc) for bg in ("red", "blue", "yellow", "purple") for acc in ("none", "hat", "glasses")]
    prompts = [
        f"a smiling round cartoon face with light skin, short black hair and blue eyes"
        + ("" if acc == "none" else f", wearing {'a hat' if acc == 'hat' else 'glasses'}") + f", on a {bg} background"
        for bg, acc in requests
    ]
    readings = [detectors.read_face(image) for image in sample(pipe, prompts, seed=7)]
    background = np.mean([r.background == bg for r, (bg, _) in zip(readings, requests)])
    accessory = np.mean([r.accessory == acc for r, (_, acc) in zip(readings, requests)])
    heads = np.mean([r.head_found for r in readings])
    hair = np.mean([r.hair_colour == "black" for r in readings])
    assert heads >= 0.8, heads
    assert background >= 0.8, background
    assert accessory >= 0.6, accessory
    assert hair >= 0.5, hair


def test_the_alternative_model_is_a_different_model_of_the_same_world():
    base, alt = load(BASE), load(ALT)
    assert not torch.equal(base.unet.conv_in.weight, alt.unet.conv_in.weight)
    images = sample(alt, ["a smiling cartoon face with tan skin, short red hair and green eyes, on a green background"] * 4)
    readings = [detectors.read_face(image) for image in images]
    assert np.mean([r.head_found for r in readings]) >= 0.5
    assert np.mean([r.background == "green" for r in readings]) >= 0.5
