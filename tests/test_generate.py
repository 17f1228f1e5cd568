"""Generation: one pipeline, batched and seeded per image, {} filled, manifest.jsonl, resumable; the CLI with a subject."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from _cli import run_cli
from subjectgen_training.sampling.generate import GenerateConfig, GenerateError, generate_images, read_manifest


def _pixels(path):
    return np.asarray(Image.open(path), dtype=np.int16)


def test_generate_fills_prompts_writes_manifest_and_resumes_within_one_grey_level(tiny_sd_dir, tmp_path):
    out = tmp_path / "images"
    config = GenerateConfig(base=str(tiny_sd_dir), prompts="a photo of {} | {} on a beach", out=str(out),
                            num_per_prompt=2, seed=7, steps=2, batch_size=3, scheduler="euler")
    generate_images(config)
    manifest = read_manifest(out)
    assert [e["prompt"] for e in manifest] == ["a photo of a person"] * 2 + ["a person on a beach"] * 2
    assert [e["seed"] for e in manifest] == [7, 8, 7, 8]
    assert manifest[0]["prompt_template"] == "a photo of {}" and manifest[0]["subject"] is None
    assert manifest[0]["settings"]["scheduler"] == "euler" and manifest[0]["settings"]["steps"] == 2
    files = [out / e["file"] for e in manifest]
    assert all(Image.open(f).size == (64, 64) for f in files)
    first = {f.name: _pixels(f) for f in files}
    # same seed, different prompt -> different image; different seed, same prompt -> different image
    assert np.abs(first[files[0].name] - first[files[2].name]).max() > 0
    assert np.abs(first[files[0].name] - first[files[1].name]).max() > 0

    # A finished job does nothing. A lost image is made again with its own seed; image 1 was made in a batch of three
    # the first time and is made alone now. Batched and single UNet calls sum their float32 products in another order,
    # so after rounding to 8 bits a few pixels may move by one grey level, never more: on 60 other images (seeds
    # 100-119, three prompts, batch of 3 against alone) at most 1 level in at most 0.05 % of the values moved.
    mtimes = {f.name: f.stat().st_mtime_ns for f in files}
    generate_images(config)
    assert {f.name: f.stat().st_mtime_ns for f in files} == mtimes
    files[1].unlink()
    generate_images(config)
    again = _pixels(files[1])
    assert np.abs(again - first[files[1].name]).max() <= 1
    assert (again != first[files[1].name]).mean() <= 0.001  # twice the worst measured share (0.05 %)
    assert {f.name: f.stat().st_mtime_ns for f in files if f != files[1]} == {
        name: stamp for name, stamp in mtimes.items() if name != files[1].name}  # the others were not made again
    assert len(read_manifest(out)) == 4


def test_generate_config_rejects_bad_values(tmp_path):
    with pytest.raises(GenerateError, match="cannot load the base model"):
        generate_images(GenerateConfig(base=str(tmp_path / "missing"), prompts="x {}", out=str(tmp_path / "x")))
    with pytest.raises(GenerateError, match="scheduler"):
        GenerateConfig(base="b", prompts="p", out="o", scheduler="fast")
    with pytest.raises(GenerateError, match="allowed keys"):
        GenerateConfig.from_dict({"base": "b", "prompts": "p", "out": "o", "num_images": 3})


def _random_subject(folder, hidden=32):
    from subjectgen_diffusers.subject_format import Subject, SubjectConfig

    torch.manual_seed(1)
    config = SubjectConfig(method="cr", token="<s1>", num_vectors=1, text_hidden_size=hidden, base_model="tiny")
    Subject(config, torch.randn(1, hidden) * 3).save(folder)
    return folder


def test_generate_cli_with_a_subject_changes_the_image(tiny_sd_dir, tmp_path):
    subject = _random_subject(tmp_path / "subject")
    common = ["--base", str(tiny_sd_dir), "--prompts", "a photo of {}", "--num-per-prompt", "1", "--steps", "2"]
    with_subject = run_cli("generate", *common, "--subject", str(subject), "--out", str(tmp_path / "s"))
    assert with_subject.returncode == 0, with_subject.stderr
    assert "1 images and manifest.jsonl" in with_subject.stdout
    entry = json.loads((tmp_path / "s" / "manifest.jsonl").read_text())
    assert entry["prompt"] == "a photo of <s1> person" and entry["subject"] == str(subject)
    generate_images(GenerateConfig(base=str(tiny_sd_dir), prompts="a photo of {}", out=str(tmp_path / "b"),
                                   num_per_prompt=1, steps=2))
    base_entry = read_manifest(tmp_path / "b")[0]
    assert np.abs(_pixels(tmp_path / "s" / entry["file"]) - _pixels(tmp_path / "b" / base_entry["file"])).max() > 0


def test_a_missing_subject_fails_before_the_base_model_loads(tmp_path):
    # The base does not exist either: the subject's error must come first, so no model was loaded before it.
    config = GenerateConfig(base=str(tmp_path / "no-base"), prompts="a photo of {}", subject=str(tmp_path / "no-subject"),
                            out=str(tmp_path / "out"))
    from subjectgen_diffusers.errors import SubjectgenError

    with pytest.raises(SubjectgenError, match="no-subject does not exist"):
        generate_images(config)
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_generate_with_a_style_lora_changes_the_images_and_a_foreign_lora_is_refused(tmp_path):
    """`generate --lora` loads a style LoRA beside the subject (here the toy alt LoRA on the toy base); a LoRA whose
    keys match nothing in the model is an error, not base-model images."""
    from safetensors.torch import save_file

    from subjectgen_training.models.builtin_models import resolve_model

    base = resolve_model("builtin:toy-base")
    common = dict(base=base, prompts="a cartoon face, on a red background", num_per_prompt=2, steps=4, guidance=4.0)
    plain = generate_images(GenerateConfig(out=str(tmp_path / "plain"), **common))
    styled = generate_images(GenerateConfig(out=str(tmp_path / "styled"), lora=resolve_model("builtin:toy-alt-lora"),
                                            **common))
    entries = read_manifest(styled)
    assert entries[0]["settings"]["lora"] and entries[0]["settings"]["lora_scale"] == 1.0
    difference = np.mean([np.abs(_pixels(plain / e["file"]) - _pixels(styled / e["file"])).mean() for e in entries])
    assert difference > 0.5, difference

    foreign = tmp_path / "foreign.safetensors"
    save_file({"lora_unet_nothing_here.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_nothing_here.lora_up.weight": torch.zeros(8, 4)}, str(foreign))
    result = run_cli("generate", "--base", base, "--prompts", "a cartoon face", "--num-per-prompt", "1", "--steps", "1",
                     "--lora", str(foreign), "--out", str(tmp_path / "bad"))
    assert result.returncode != 0 and "--lora" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not list((tmp_path / "bad").glob("*.png"))
