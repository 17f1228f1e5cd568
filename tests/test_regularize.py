"""`regularize` on a tiny SDXL pipeline (+ a tiny LoRA made with peft): manifest, seeds, LoRA, resume, kill, split."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _cli import REPO_ROOT, run_cli, signal_when
from subjectgen_training.data.photos import load_photo_folder
from subjectgen_training.sampling.regularize import (
    RegularizeConfig,
    RegularizeError,
    generate_regularization,
    image_seed,
    indices_on_disk,
    is_whole_image,
)

PROMPT = "a photo of a person"
# One thread per process: on a shared CPU, two OpenMP threads fighting other jobs made a 64 px image 100x slower.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int16)


def run_in_own_group(command: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """Run a launcher in its own process group so a timeout ends its workers too, not only the launcher."""
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def config(model, out, **overrides) -> RegularizeConfig:
    values = dict(model=str(model), prompt=PROMPT, num=4, out=out, steps=3, batch_size=2, seed=7)
    values.update(overrides)
    return RegularizeConfig(**values)


@pytest.fixture(scope="module")
def tiny_lora(tiny_sdxl_dir, tmp_path_factory) -> Path:
    """A rank-4 LoRA on the tiny SDXL UNet's attention projections, with random (non-zero) weights, saved as diffusers
    saves LoRAs (``pytorch_lora_weights.safetensors``)."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
    torch.manual_seed(0)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    folder = tmp_path_factory.mktemp("tiny-lora")
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    StableDiffusionXLPipeline.save_lora_weights(folder, unet_lora_layers=layers)
    return folder


@pytest.fixture(scope="module")
def base_set(tiny_sdxl_dir, tmp_path_factory) -> Path:
    return generate_regularization(config(tiny_sdxl_dir, tmp_path_factory.mktemp("reg") / "base"))


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    with pytest.raises(RegularizeError, match=r"unknown keys \['nmu'\]; allowed keys are \['model', 'prompt', 'num', 'out'"):
        RegularizeConfig.from_dict({"model": "m", "prompt": PROMPT, "num": 2, "out": tmp_path, "nmu": 3})
    with pytest.raises(RegularizeError, match="--num must be at least 1.*--resolution must be a positive multiple of 8"):
        RegularizeConfig(model="m", prompt=PROMPT, num=0, out=tmp_path, resolution=100)
    assert RegularizeConfig.from_dict({"model": "m", "prompt": PROMPT, "num": 2, "out": str(tmp_path)}).out == tmp_path


def test_image_seeds_are_reproducible_and_distinct():
    seeds = [image_seed(0, i) for i in range(1000)]
    assert seeds == [image_seed(0, i) for i in range(1000)]
    assert len(set(seeds)) == 1000 and all(0 <= s < 2**63 for s in seeds)
    assert not set(seeds) & {image_seed(1, i) for i in range(1000)}  # seed 1 is a different set, not a shift


def test_base_set_files_and_manifest(base_set, tiny_sdxl_dir):
    assert indices_on_disk(base_set) == [0, 1, 2, 3]
    assert sorted(p.name for p in base_set.iterdir()) == [
        "00000.png", "00001.png", "00002.png", "00003.png", "manifest.jsonl", "regularize.json"]
    entries = [json.loads(line) for line in (base_set / "manifest.jsonl").read_text().splitlines()]
    assert [e["file"] for e in entries] == ["00000.png", "00001.png", "00002.png", "00003.png"]
    for index, entry in enumerate(entries):
        assert entry["prompt"] == PROMPT and entry["negative_prompt"] is None
        assert entry["seed"] == image_seed(7, index)
        assert entry["model"] == str(tiny_sdxl_dir) and entry["lora"] is None and entry["lora_scale"] is None
        assert entry["resolution"] == 64  # the tiny model's native size: sample_size 8 x VAE factor 8
    images = [pixels(base_set / e["file"]) for e in entries]
    assert all(image.shape == (64, 64, 3) for image in images)
    assert len({hashlib.sha256(image.tobytes()).hexdigest() for image in images}) == 4  # every seed differs
    settings = json.loads((base_set / "regularize.json").read_text())
    assert settings["resolution"] == 64 and settings["seed"] == 7 and "num" not in settings
    # The trainers' --reg-dir reads the folder with the manifest's prompt as each image's caption.
    photos = load_photo_folder(base_set, what="--reg-dir")
    assert [p.path.name for p in photos] == [e["file"] for e in entries]
    assert all(p.caption == PROMPT for p in photos)


def test_lora_changes_images_and_scale_zero_is_the_base(base_set, tiny_sdxl_dir, tiny_lora, tmp_path):
    with_lora = generate_regularization(config(tiny_sdxl_dir, tmp_path / "lora", lora=str(tiny_lora), lora_scale=1.0))
    scale_zero = generate_regularization(config(tiny_sdxl_dir, tmp_path / "zero", lora=str(tiny_lora), lora_scale=0.0))
    entry = json.loads((with_lora / "manifest.jsonl").read_text().splitlines()[0])
    assert entry["lora"] == str(tiny_lora) and entry["lora_scale"] == 1.0
    for name in ("00000.png", "00003.png"):
        base = pixels(base_set / name)
        assert np.abs(pixels(with_lora / name) - base).mean() > 2.0
        assert np.abs(pixels(scale_zero / name) - base).max() <= 1


def test_a_lora_for_another_model_is_refused(tiny_sd_dir, tiny_lora, tmp_path):
    import torch
    from safetensors.torch import save_file

    with pytest.raises(RegularizeError, match="could not load --lora .*size mismatch.*made for this model family"):
        generate_regularization(config(tiny_sd_dir, tmp_path / "a", lora=str(tiny_lora)))  # SDXL LoRA on SD 1.x
    save_file({"foo.lora_A.weight": torch.zeros(2, 2)}, tmp_path / "unrelated.safetensors")
    with pytest.raises(RegularizeError, match="has no weights that match"):
        generate_regularization(config(tiny_sd_dir, tmp_path / "b", lora=str(tmp_path / "unrelated.safetensors")))
    assert indices_on_disk(tmp_path / "a") == [] and indices_on_disk(tmp_path / "b") == []


def test_larger_num_extends_the_set_reproducibly(base_set, tiny_sdxl_dir, tmp_path):
    out = tmp_path / "grow"
    generate_regularization(config(tiny_sdxl_dir, out, num=2, batch_size=1))
    first = {name: (out / name).stat().st_mtime_ns for name in ("00000.png", "00001.png")}
    generate_regularization(config(tiny_sdxl_dir, out, num=4, batch_size=1))
    assert indices_on_disk(out) == [0, 1, 2, 3]
    assert {name: (out / name).stat().st_mtime_ns for name in first} == first  # kept, not redone
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 4
    for index in range(4):  # the same images as one run of 4 with another batch size (batched float noise: 1 level)
        name = f"{index:05d}.png"
        assert np.abs(pixels(out / name) - pixels(base_set / name)).max() <= 2


def test_damaged_file_is_made_again_and_other_settings_are_refused(base_set, tiny_sdxl_dir, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(base_set, out)
    data = (out / "00002.png").read_bytes()
    (out / "00002.png").write_bytes(data[: len(data) // 2])  # a file that looks like a PNG but is cut short
    (out / ".00003.png.abc.tmp").write_bytes(b"partial")
    assert not is_whole_image(out / "00002.png")
    generate_regularization(config(tiny_sdxl_dir, out))
    assert is_whole_image(out / "00002.png") and not list(out.glob(".*.tmp"))
    assert np.abs(pixels(out / "00002.png") - pixels(base_set / "00002.png")).max() <= 2
    with pytest.raises(RegularizeError, match=r"prompt: 'a photo of a person' -> 'a photo of a man'.*new --out"):
        generate_regularization(config(tiny_sdxl_dir, out, prompt="a photo of a man", num=6))
    assert indices_on_disk(out) == [0, 1, 2, 3]


def test_a_finished_set_reruns_without_its_model_and_a_larger_one_names_it(base_set, tmp_path):
    """The model is checked (from its model_index.json, before torch loads) only when images are missing: a finished
    set made on another machine, whose model is not here, still reruns; extending it names the missing model."""
    out = tmp_path / "copy"
    shutil.copytree(base_set, out)
    gone = tmp_path / "model-on-another-machine"
    settings = json.loads((out / "regularize.json").read_text())
    (out / "regularize.json").write_text(json.dumps({**settings, "model": str(gone)}))
    assert generate_regularization(config(gone, out)) == out
    assert indices_on_disk(out) == [0, 1, 2, 3]
    with pytest.raises(RegularizeError, match=r"could not load --model .*does not exist"):
        generate_regularization(config(gone, out, num=5))
    assert indices_on_disk(out) == [0, 1, 2, 3]


def test_cli_killed_mid_run_resumes_to_exactly_n_whole_distinct_images(tiny_sdxl_dir, tmp_path):
    out = tmp_path / "killed"
    num = 6
    args = ["regularize", "--model", str(tiny_sdxl_dir), "--prompt", PROMPT, "--num", str(num), "--out", str(out),
            "--steps", "2", "--batch-size", "1", "--seed", "3"]
    # The probe holds the job right after its 3rd image is renamed into place (before the manifest lists it); the
    # test sees the 3rd image and sends SIGKILL. The job cannot finish first, however fast or slow the machine.
    killed = signal_when(args, lambda: len(indices_on_disk(out)) >= 3, env=ONE_THREAD,
                         probes={"pause_when": {"dir": str(out), "name_startswith": "000", "count": 3}})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    made_before = indices_on_disk(out)
    assert made_before == [0, 1, 2]
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 2  # the killed job had not listed image 2 yet
    assert all(is_whole_image(out / f"{i:05d}.png") for i in made_before)
    before = {i: (out / f"{i:05d}.png").read_bytes() for i in made_before}

    result = run_cli(*args, timeout=300, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    assert f"{num} regularisation images" in result.stdout
    assert indices_on_disk(out) == list(range(num))
    assert not list(out.glob(".*.tmp"))
    assert all((out / f"{i:05d}.png").read_bytes() == data for i, data in before.items())  # not redone
    images = [out / f"{i:05d}.png" for i in range(num)]
    assert all(is_whole_image(path) for path in images)
    assert len({hashlib.sha256(pixels(path).tobytes()).hexdigest() for path in images}) == num
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [e["file"] for e in entries] == [p.name for p in images]
    assert [e["seed"] for e in entries] == [image_seed(3, i) for i in range(num)]


def test_two_processes_split_the_set(tiny_sdxl_dir, base_set, tmp_path):
    """torchrun starts two CPU processes (gloo); each makes half of the images, together the same set as one."""
    out = tmp_path / "split"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", **ONE_THREAD}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    # `--` keeps torchrun's own parser from taking --num for its --numa-binding.
    command = [*torchrun, "-m", "subjectgen_training", "--", "regularize", "--model", str(tiny_sdxl_dir), "--prompt", PROMPT,
               "--num", "5", "--out", str(out), "--steps", "3", "--batch-size", "2", "--seed", "7"]
    result = run_in_own_group(command, env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("5 regularisation images") == 1  # only the main process reports
    assert indices_on_disk(out) == [0, 1, 2, 3, 4]
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 5
    for index in range(4):
        name = f"{index:05d}.png"
        assert np.abs(pixels(out / name) - pixels(base_set / name)).max() <= 2


def test_cli_reports_a_missing_model_as_a_user_error(tmp_path):
    result = run_cli("regularize", "--model", str(tmp_path / "nope"), "--prompt", PROMPT, "--num", "1",
                     "--out", str(tmp_path / "out"), timeout=120, env=ONE_THREAD)
    assert result.returncode == 2
    assert "error: could not load --model" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("name, path", [("/no/such/model", True), ("./model", True), ("~/models/sd", True),
                                        ("a/b/c", True), ("stable-diffusion-v1-5/stable-diffusion-v1-5", False),
                                        ("RunDiffusion/Juggernaut-XL-v9", False), ("gpt2", False)])
def test_a_missing_local_model_is_named_as_a_folder_and_never_sent_to_the_hub(name, path, monkeypatch, tmp_path):
    """A name no Hub id can be is a local path: missing, it is named as such (before any library loads), and only a
    Hub-shaped name is looked up on the Hub (here: a stand-in that records the call)."""
    import huggingface_hub

    from subjectgen_diffusers.base_configs import looks_like_a_path, read_model_index
    from subjectgen_diffusers.errors import SubjectgenError

    asked = []

    def offline(repo_id, *args, **kwargs):
        asked.append(repo_id)
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.chdir(tmp_path)
    assert looks_like_a_path(name) is path
    with pytest.raises(SubjectgenError) as error:
        read_model_index(name)
    assert asked == ([] if path else [name])
    assert ("does not exist: pass a diffusers model folder" in str(error.value)) is path
