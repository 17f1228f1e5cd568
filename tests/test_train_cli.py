"""``subjectgen train`` end to end in real subprocesses: every method, a config file with flag overrides, input
errors caught before any model loads, and the 2-process (gloo) run through torchrun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from subjectgen_diffusers.subject_format import Subject
from _cli import REPO_ROOT, ModelLoadedTooEarly, forbid_model_loads, run_cli


@pytest.fixture(scope="module")
def messy_photo_dir(tmp_path_factory, astronaut_image):
    """Three real crops plus what a real folder holds: a small grayscale image, a document, a broken JPEG."""
    folder = tmp_path_factory.mktemp("photos")
    for i, box in enumerate([(0, 0, 400, 400), (60, 0, 460, 400), (0, 40, 420, 460)]):
        astronaut_image.crop(box).save(folder / f"photo{i}.png")
    astronaut_image.crop((0, 0, 40, 40)).convert("LA").save(folder / "small_gray.png")  # grayscale + smaller than 64
    (folder / "notes.doc").write_bytes(b"not an image")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cd", "cr", "cd+cr"])
def test_cli_trains_each_method(tiny_sd_dir, messy_photo_dir, tmp_path, method):
    out = tmp_path / "subject"
    extra = {"cd+cr": ["--validation-every", "2", "--mixed-precision", "bf16"], "cd": ["--mixed-precision", "fp16"],
             "cr": []}[method]
    result = run_cli("train", "--base", str(tiny_sd_dir), "--photos", str(messy_photo_dir), "--method", method, "--out",
                     str(out), "--steps", "2", "--resolution", "64", "--batch-size", "1", "--token", "<ada>", *extra,
                     env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipping broken.jpg" in result.stderr and "notes.doc" in result.stderr
    assert "smaller than --resolution 64" in result.stderr
    subject = Subject.load(out)
    assert subject.config.method == method and subject.config.token == "<ada>"
    assert subject.config.num_vectors == (1 if method == "cd" else 2)
    assert bool(subject.deltas) == (method != "cr")
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["steps"] == 2 and saved["token"] == "<ada>" and saved["method"] == method
    if method == "cd+cr":  # a validation image at step 2, bf16 autocast on the CPU
        from PIL import Image

        assert Image.open(out / "validation" / "step-0000002.png").size == (64, 64)
    # mixed precision computes in half; the subject is stored in float32 (and finite)
    assert saved["mixed_precision"] == {"cd+cr": "bf16", "cd": "fp16", "cr": "no"}[method]
    tensors = [subject.token_embeddings, *(d for ds in subject.deltas.values() for d in ds.values())]
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in tensors)


def test_cli_config_file_with_flag_override(tiny_sd_dir, messy_photo_dir, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(f"base: {tiny_sd_dir}\nphotos: {messy_photo_dir}\nmethod: cd\nout: {tmp_path / 'o'}\nsteps: 50\n"
                      "resolution: 64\nbatch_size: 1\ncd_scope: kv\n")
    result = run_cli("train", "--config", str(config), "--steps", "1", env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((tmp_path / "o" / "train_config.json").read_text())
    assert saved["steps"] == 1 and saved["cd_scope"] == "kv"
    assert set(next(iter(Subject.load(tmp_path / "o").deltas.values()))) == {"to_k", "to_v"}


@pytest.mark.parametrize("case, message", [
    ("good_input", "ModelLoadedTooEarly: CLIPTextModel"),  # the control: the probe does see model loads
    ("missing_photos", "does not exist: pass a folder of images"),
    ("empty_reg", "--reg-dir"),
    ("token_in_vocab", "already in the tokenizer's vocabulary"),
    ("unknown_key", "training config: unknown keys ['stepz']"),
    ("no_model", "is not a diffusers Stable Diffusion folder"),
    ("only_broken", "0 readable image(s)"),
    ("empty_photos", "has no files"),
])
def test_cli_bad_input_fails_before_loading_models(tiny_sd_dir, messy_photo_dir, tmp_path, case, message):
    base, photos, extra = str(tiny_sd_dir), str(messy_photo_dir), []
    if case == "missing_photos":
        photos = str(tmp_path / "nowhere")
    elif case == "empty_reg":
        (tmp_path / "reg").mkdir()
        (tmp_path / "reg" / "readme.md").write_text("no images")
        extra = ["--reg-dir", str(tmp_path / "reg")]
    elif case == "token_in_vocab":
        extra = ["--token", "person"]
    elif case == "unknown_key":
        (tmp_path / "c.yaml").write_text("stepz: 3\n")
        extra = ["--config", str(tmp_path / "c.yaml")]
    elif case == "no_model":
        base = str(tmp_path)
    elif case in ("only_broken", "empty_photos"):
        photos = tmp_path / "photos"
        photos.mkdir()
        if case == "only_broken":
            (photos / "a.jpg").write_bytes(b"\xff\xd8 truncated")
            (photos / "b.png").write_text("not a png")
        photos = str(photos)
    # In the subprocess every from_pretrained of a model (text encoder, VAE, UNet, pipeline) raises
    # ModelLoadedTooEarly, which no handler catches: a model loaded before the input check fails the test.
    result = run_cli("train", "--base", base, "--photos", photos, "--method", "cd", "--out", str(tmp_path / "o"), *extra,
                     probes={"forbid_model_loads": True})
    assert not (tmp_path / "o" / "subject.safetensors").exists()
    if case == "good_input":
        assert result.returncode == 1 and message in result.stderr, result.stderr[-2000:]
        return
    assert "ModelLoadedTooEarly" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error:" in result.stderr and message in result.stderr


def test_the_probe_catches_every_model_load(tiny_sd_dir, monkeypatch):
    """Every part of the base model loads through an entry point the probe above replaces."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    forbid_model_loads(monkeypatch.setattr)
    for model_class, subfolder in [(UNet2DConditionModel, "unet"), (AutoencoderKL, "vae"), (CLIPTextModel, "text_encoder")]:
        with pytest.raises(ModelLoadedTooEarly, match=model_class.__name__):
            model_class.from_pretrained(tiny_sd_dir, subfolder=subfolder)
    with pytest.raises(ModelLoadedTooEarly):
        StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    # what the input checks may load: the tokenizer and the scheduler's config
    assert len(CLIPTokenizer.from_pretrained(tiny_sd_dir, subfolder="tokenizer")) == 49408
    assert DDPMScheduler.from_pretrained(tiny_sd_dir, subfolder="scheduler").config.num_train_timesteps == 1000


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="torchrun missing")
def test_two_processes_write_one_subject(tiny_sd_dir, messy_photo_dir, tmp_path, monkeypatch):
    """torchrun with 2 processes (gloo) ends with the subject one process trains on the same global batch: each
    step, the two draws (process 0's and process 1's photo, noise and timestep) in one batch, their losses averaged.
    The one-process run below is the real Trainer whose step loss is the mean of its loss on those two draws."""
    import subjectgen_training.trainer.loop as trainer_module
    from subjectgen_training.trainer.config import TrainConfig

    out = tmp_path / "ddp"
    flags = ["--photos", str(messy_photo_dir), "--method", "cd+cr", "--steps", "2", "--resolution", "64", "--batch-size", "1",
             "--no-scale-lr", "--lr", "1e-3", "--token-lr", "1e-2"]  # the same rates for 1 and 2 processes
    command = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc_per_node", "2", "-m", "subjectgen_training",
               "train", "--base", str(tiny_sd_dir), "--out", str(out), *flags]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2  # gradients averaged over processes
    assert result.stdout.count("subject written to") == 1
    subject = Subject.load(out)
    assert subject.token_embeddings.shape[0] == 2 and torch.isfinite(subject.token_embeddings).all()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "subject.safetensors", "subject_config.json", "train_config.json", "train_summary.json"]

    real_generator = trainer_module.step_generator

    class GlobalBatch(trainer_module.Trainer):
        def step_loss(self, step):
            losses = []
            for process in (0, 1):  # the draws of process 0 and of process 1 at this step
                monkeypatch.setattr(trainer_module, "step_generator",
                                    lambda seed, at, _, process=process: real_generator(seed, at, process))
                loss, logs = super().step_loss(step)
                losses.append(loss)
            monkeypatch.setattr(trainer_module, "step_generator", real_generator)
            return sum(losses) / 2, logs

    one = GlobalBatch(TrainConfig.from_dict(dict(
        base=str(tiny_sd_dir), photos=str(messy_photo_dir), method="cd+cr", out=str(tmp_path / "one"), steps=2, resolution=64,
        batch_size=1, scale_lr=False, lr=1e-3, token_lr=1e-2))).run()
    alone = Subject.load(one)
    start = Subject.load(out)  # tolerance: far below one step's move (AdamW moves each entry by about the rate)
    torch.testing.assert_close(alone.token_embeddings, start.token_embeddings, rtol=0, atol=1e-4)
    assert alone.deltas.keys() == subject.deltas.keys()
    for layer, projs in subject.deltas.items():
        for proj, delta in projs.items():
            torch.testing.assert_close(alone.deltas[layer][proj], delta, rtol=0, atol=1e-5, msg=f"{layer}.{proj}")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None, reason="accelerate missing")
def test_the_readmes_accelerate_launch_line_trains_a_subject(tiny_sd_dir, messy_photo_dir, tmp_path):
    """README, step 3 "several GPUs": its own `accelerate launch ... -m subjectgen_training train ...` line, read from
    the README, with the tiny base and a short run appended. On a CPU accelerate starts one process whatever
    --num_processes says (the 2-process path is torchrun's test above); the line must still train a whole subject."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    lines = [line.strip() for line in readme.splitlines() if line.strip().startswith("accelerate launch ")]
    assert len(lines) == 1, lines
    words = lines[0].split()
    assert words[:2] == ["accelerate", "launch"] and words[words.index("-m") + 1:][:2] == ["subjectgen_training", "train"]
    (tmp_path / "prepared").symlink_to(messy_photo_dir, target_is_directory=True)
    words = [{"$BASE": str(tiny_sd_dir)}.get(w, w) for w in words]
    command = [os.path.join(os.path.dirname(sys.executable), "accelerate"), *words[1:],
               "--steps", "2", "--resolution", "64", "--batch-size", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_HOME": str(tmp_path / "hf-home")}  # no accelerate config of this machine's user
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "subjects" / "alice"
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["method"] == "cd"
    if not torch.cuda.is_available():
        assert summary["world_size"] == 1  # accelerate's one CPU process (ENVIRONMENT: verified twice)
    subject = Subject.load(out)
    assert subject.config.method == "cd" and subject.deltas and torch.isfinite(subject.token_embeddings).all()
