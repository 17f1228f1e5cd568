"""The toy base model's training script, run end to end at a few steps: real diffusers folders, fp16 safetensors, a
LoRA that diffusers loads, and a resumable state."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from subjectgen_training.toy import detectors, world
from subjectgen_training.toy.train_base import main
from subjectgen_training.toy.train_vae import detail_map


def test_the_second_style_draws_the_same_face_with_hard_edges():
    spec = world.sample_specs(1, seed=3)[0].replace(mark=("magenta", "chin"), accessory="glasses")
    soft, hard = world.render_array(spec), world.render_array(spec, supersample=1)
    assert not np.array_equal(soft, hard)
    palette = {tuple(c) for c in hard.reshape(-1, 3)}
    assert len(palette) < len({tuple(c) for c in soft.reshape(-1, 3)})  # no blended edge colours
    assert detectors.read_face(hard) == detectors.read_face(soft)


def test_detail_map_marks_small_features_not_flat_areas():
    spec = world.ToySubject().spec("blue")
    image = torch.from_numpy(world.render_array(spec)).permute(2, 0, 1)[None].float() / 127.5 - 1
    detail = detail_map(image)[0, 0]
    assert detail[:3, :3].sum() == 0  # flat background
    mx, my = world.head_centre(spec)[0] + world.MARK_PLACES["left cheek"][0], world.head_centre(spec)[1] + world.MARK_PLACES["left cheek"][1]
    assert detail[int(my) - 3 : int(my) + 3, int(mx) - 3 : int(mx) + 3].sum() > 0  # the mark's edges


@pytest.mark.slow
def test_training_writes_a_loadable_fp16_model_and_lora_and_resumes(tmp_path):
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    out, lora, work = tmp_path / "base", tmp_path / "alt-lora", tmp_path / "work"
    args = ["--out", str(out), "--alt-lora-out", str(lora), "--work", str(work), "--num-images", "64",
            "--alt-num-images", "32", "--vae-steps", "3", "--vae-batch", "4", "--batch-size", "4",
            "--warmup", "2", "--checkpoint-every", "2", "--alt-lora-steps", "2"]
    assert main([*args, "--steps", "4"]) == 0
    state = torch.load(work / "state.pt", weights_only=True)
    assert state["step"] == 4
    assert json.loads((work / "base_train_config.json").read_text())["steps"] == 4
    with safe_open(str(out / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.float32  # loads without a dtype
    assert pipe.scheduler.config.prediction_type == "v_prediction" and pipe.scheduler.config.rescale_betas_zero_snr
    pipe.load_lora_weights(str(lora))
    image = pipe("a cartoon face, on a red background", num_inference_steps=2, height=world.SIZE, width=world.SIZE,
                 output_type="np").images[0]
    assert image.shape == (world.SIZE, world.SIZE, 3) and np.isfinite(image).all()

    vae_mtime = (work / "vae" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert main([*args, "--steps", "6"]) == 0  # resumes at step 4, keeps the trained VAE
    assert torch.load(work / "state.pt", weights_only=True)["step"] == 6
    assert (work / "vae" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == vae_mtime


@pytest.mark.slow
def test_a_run_that_reuses_the_trained_vae_gives_the_same_model_as_one_that_trains_it(tmp_path):
    """How the shipped weights were made (VAE first, UNet later from --work) must not change them."""
    import shutil

    from safetensors.torch import load_file

    def run(name: str) -> dict:
        out = tmp_path / name
        assert main(["--out", str(out), "--alt-lora-out", str(tmp_path / f"{name}-lora"), "--work", str(tmp_path / f"{name}-work"),
                     "--num-images", "48", "--vae-num-images", "32", "--vae-steps", "3", "--vae-batch", "4",
                     "--batch-size", "4", "--steps", "3", "--warmup", "1", "--alt-lora-steps", "1",
                     "--alt-num-images", "8"]) == 0
        return load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))

    fresh = run("fresh")
    (tmp_path / "reused-work").mkdir()
    shutil.copytree(tmp_path / "fresh-work" / "vae", tmp_path / "reused-work" / "vae")
    reused = run("reused")
    assert fresh.keys() == reused.keys() and all(torch.equal(fresh[k], reused[k]) for k in fresh)
