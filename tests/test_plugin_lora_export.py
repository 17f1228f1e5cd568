"""LoRA export: stock diffusers reproduces the plug-in's images, and every kohya key is one A1111 and ComfyUI map."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from _plugin_fixtures import make_subject
from _cli import run_cli
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file

from subjectgen_diffusers import SubjectgenError, load_subject
from subjectgen_diffusers.lora_export import DIFFUSERS_LORA_FILE, EXPORT_REPORT, export_lora
from subjectgen_diffusers.subject_format import Subject

PROMPT = "a photo of <s1> on a beach"


def _image(pipe, prompt: str = PROMPT) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt, num_inference_steps=4, guidance_scale=3.0, height=64, width=64, output_type="np",
                generator=torch.Generator().manual_seed(11)).images[0]


def _subject(pipe, method: str, scope: str) -> Subject:
    subject = make_subject(pipe, "<s1>", scope=scope, seed=5, magnitude=0.1)
    return dataclasses.replace(subject, config=dataclasses.replace(subject.config, method=method))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cd", "cd+cr"])
@pytest.mark.parametrize("scope", ["kv", "kv+q+out"])
def test_stock_diffusers_reproduces_the_plugin_image(tmp_path, tiny_sd_dir, method, scope):
    """Two stock calls, no plug-in code: load_lora_weights + load_textual_inversion give the plug-in's image (1/255)."""
    base = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    subject = _subject(base, method, scope)
    folder = subject.save(tmp_path / "subject")
    result = export_lora(folder, tmp_path / "lora", base_unet=base.unet)
    assert result.kohya.name == "s1_lora.safetensors" and result.embedding.name == "s1.safetensors"

    stock = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    stock.load_lora_weights(str(tmp_path / "lora"), weight_name=DIFFUSERS_LORA_FILE)
    stock.load_textual_inversion(str(result.embedding), token="<s1>")

    ours = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    load_subject(ours, folder)
    plugin_image = _image(ours)
    assert np.abs(_image(stock) - plugin_image).max() <= 1 / 255
    # not vacuous: the subject changes the image well beyond that tolerance
    assert np.abs(_image(base, "a photo of a person on a beach") - plugin_image).max() > 0.05

    report = json.loads((tmp_path / "lora" / EXPORT_REPORT).read_text())
    assert report["max_relative_error"] < 1e-5  # exact rank: the factors reproduce each delta
    assert len(report["layers"]) == sum(len(p) for p in subject.deltas.values())
    assert all(entry["rank"] == min(subject.deltas[k.rsplit(".to_", 1)[0]][f"to_{k.rsplit('.to_', 1)[1]}"].shape)
               for k, entry in report["layers"].items())
    assert bool(result.notes) == (scope == "kv+q+out")  # the bias note, only when there is a bias delta


def test_kohya_file_weights_are_the_deltas_and_diffusers_kohya_path_reads_them(tmp_path, tiny_pipe):
    """up @ down of every kohya pair is the delta; without the A1111-only extras diffusers' kohya converter loads it."""
    subject = make_subject(tiny_pipe, "<s1>", scope="kv+q+out", seed=2, magnitude=0.1)
    result = export_lora(subject, tmp_path / "lora", rank=None)
    tensors = load_file(str(result.kohya))
    for layer, projs in subject.deltas.items():
        for proj, delta in projs.items():
            stem = "lora_unet_" + f"{layer}.{proj}".replace(".", "_")
            up, down = tensors[f"{stem}.lora_up.weight"], tensors[f"{stem}.lora_down.weight"]
            assert float(tensors[f"{stem}.alpha"]) == down.shape[0]
            torch.testing.assert_close(up @ down, delta, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(tensors["lora_unet_" + f"{layer}.to_out.0".replace(".", "_") + ".diff_b"],
                                   subject.bias_deltas[layer])
    assert torch.equal(tensors["bundle_emb.s1.emb_params"], subject.token_embeddings)
    assert torch.equal(load_file(str(result.embedding))["emb_params"], subject.token_embeddings)

    # diffusers' own kohya converter maps these names. It is fed a uniform rank (4): with per-module alphas (exact
    # rank differs per layer) diffusers 0.42 builds alpha_pattern keys that match no module and ignores them (it warns),
    # one more reason the export points diffusers at pytorch_lora_weights.safetensors.
    low = load_file(str(export_lora(subject, tmp_path / "rank4", rank=4).kohya))
    tiny_pipe.load_lora_weights({k: v for k, v in low.items() if k.endswith((".lora_up.weight", ".lora_down.weight",
                                                                            ".alpha"))})
    with torch.no_grad():
        for layer, projs in subject.deltas.items():
            attn = tiny_pipe.unet.get_submodule(layer)
            for proj in projs:
                module = attn.to_out[0] if proj == "to_out.0" else getattr(attn, proj)
                stem = "lora_unet_" + f"{layer}.{proj}".replace(".", "_")
                x = torch.randn(3, module.in_features)
                weight = module.base_layer.weight + low[f"{stem}.lora_up.weight"] @ low[f"{stem}.lora_down.weight"]
                expected = torch.nn.functional.linear(x, weight, module.base_layer.bias)
                torch.testing.assert_close(module(x), expected, atol=1e-5, rtol=1e-4)


# --- what A1111's and ComfyUI's loaders map, encoded from their source (not run here) --------------------------------
# A1111 (extensions-builtin/Lora/networks.py, lora_convert.convert_diffusers_name_to_compvis): a key splits at its first
# "." into module and weight part; "lora_unet_down_blocks_{i}_attentions_{j}_{rest}" -> LDM input_blocks {1+3i+j}.1,
# "lora_unet_mid_block_attentions_{j}_{rest}" -> middle_block.1, "lora_unet_up_blocks_{i}_attentions_{j}_{rest}" ->
# output_blocks {3i+j}.1, then looked up among the LDM UNet's module names (dots as "_"). A "lora" module needs
# lora_up.weight + lora_down.weight (alpha optional); "bundle_emb.<name>.<vec>" keys become embedding <name>, and
# {"emb_params": T} is an embedding there. Its LoRA module does not apply diff_b (only its full "diff" module does).
A1111_BLOCKS = [(r"lora_unet_down_blocks_(\d+)_attentions_(\d+)_(.+)", lambda i, j: f"input_blocks_{1 + 3 * i + j}_1"),
                (r"lora_unet_mid_block_attentions_(\d+)_(.+)", None),
                (r"lora_unet_up_blocks_(\d+)_attentions_(\d+)_(.+)", lambda i, j: f"output_blocks_{3 * i + j}_1")]
# SD 1.5's LDM UNet (openaimodel.py with attention_resolutions 4,2,1): SpatialTransformers at these blocks, each with
# transformer_blocks.0.attn{1,2}.{to_q,to_k,to_v,to_out.0}.
LDM_ATTENTION_BLOCKS = ({f"input_blocks_{n}_1" for n in (1, 2, 4, 5, 7, 8)} | {"middle_block_1"}
                        | {f"output_blocks_{n}_1" for n in range(3, 12)})
LDM_ATTENTION_TAILS = {f"transformer_blocks_0_attn{a}_{p}" for a in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out_0")}
A1111_LORA_PARTS = {"lora_up.weight", "lora_down.weight", "alpha"}
# ComfyUI (comfy/lora.py model_lora_keys_unet with comfy/utils.py unet_to_diffusers): "lora_unet_" + every diffusers
# UNet weight name without ".weight", dots as "_", for the modules that have an LDM counterpart (all attention
# projections do); per module it reads lora_up.weight, lora_down.weight, alpha and diff_b (a patch of the bias).
COMFYUI_PARTS = {"lora_up.weight", "lora_down.weight", "alpha", "diff_b"}


def _a1111_module(stem: str) -> str | None:
    for pattern, block in A1111_BLOCKS:
        match = re.fullmatch(pattern, stem)
        if match:
            *indices, rest = match.groups()
            name = "middle_block_1" if block is None else block(*map(int, indices))
            return f"{name}_{rest}"
    return None


def _sd15_layout_unet():
    """SD 1.5's block layout and module names (narrow widths so that exact factorisation takes milliseconds)."""
    from subjectgen_training.benchmarks.plugin_bench import SD15_UNET

    config = {**SD15_UNET, "block_out_channels": (32, 32, 32, 32), "cross_attention_dim": 16, "norm_num_groups": 8}
    return UNet2DConditionModel(**config)


@pytest.mark.parametrize("scope", ["kv", "kv+q+out"])
def test_every_kohya_key_is_one_a1111_and_comfyui_map_for_sd15(tmp_path, scope):
    from subjectgen_training.benchmarks.plugin_bench import _subject_for

    unet = _sd15_layout_unet()
    subject = _subject_for(unet, 24, scope)
    tensors = load_file(str(export_lora(subject, tmp_path / "lora", base_unet=unet).kohya))
    comfy_modules = {"lora_unet_" + name.replace(".", "_") for name, m in unet.named_modules()
                     if isinstance(m, torch.nn.Linear) and ".attentions." in f".{name}"}
    modules = set()
    for key in tensors:
        stem, _, part = key.partition(".")
        if stem == "bundle_emb":
            name, _, vector = part.partition(".")
            assert (name, vector) == ("s1", "emb_params")
            continue
        modules.add(stem)
        ldm = _a1111_module(stem)
        assert ldm is not None and ldm.split("_transformer_blocks")[0] in LDM_ATTENTION_BLOCKS, key
        assert ldm[len(ldm.split("_transformer_blocks")[0]) + 1:] in LDM_ATTENTION_TAILS, key
        assert stem in comfy_modules and part in COMFYUI_PARTS, key
        assert part in A1111_LORA_PARTS or (part == "diff_b" and stem.endswith("_to_out_0")), key
    assert len(modules) == 16 * len(next(iter(subject.deltas.values())))  # SD 1.5's 16 cross-attention layers
    for stem in modules:
        assert {f"{stem}.{p}" for p in A1111_LORA_PARTS} <= set(tensors)


def test_rank_and_energy_choose_the_factor_rank(tmp_path, tiny_pipe):
    subject = make_subject(tiny_pipe, "<s1>", scope="kv", seed=4, magnitude=0.1)
    report = json.loads(export_lora(subject, tmp_path / "r2", rank=2).report.read_text())
    assert {entry["rank"] for entry in report["layers"].values()} == {2}
    assert 0 < report["max_relative_error"] < 1
    energy = json.loads(export_lora(subject, tmp_path / "e", energy=0.5).report.read_text())
    for key, entry in energy["layers"].items():
        layer, proj = key.rsplit(".", 1)
        s = torch.linalg.svdvals(subject.deltas[layer][proj].double()) ** 2
        kept = torch.cumsum(s, 0) / s.sum()
        assert kept[entry["rank"] - 1] >= 0.5 and (entry["rank"] == 1 or kept[entry["rank"] - 2] < 0.5)


def test_bad_input_gives_clear_errors(tmp_path, tiny_pipe):
    subject = make_subject(tiny_pipe, "<s1>", scope="kv", seed=4)
    with pytest.raises(SubjectgenError, match=r"--rank 33 is larger than the delta .* allows .* = 32"):
        export_lora(subject, tmp_path / "a", rank=33)
    for energy in (0.0, 1.5, -0.1, float("nan")):
        with pytest.raises(SubjectgenError, match=r"--energy must lie in \(0, 1\]"):
            export_lora(subject, tmp_path / "b", energy=energy)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep me")
    with pytest.raises(SubjectgenError, match="already exists"):
        export_lora(subject, tmp_path / "taken")
    assert (tmp_path / "taken" / "x").read_text() == "keep me"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_token_only_subject_writes_just_the_embedding(tmp_path, tiny_pipe):
    subject = make_subject(tiny_pipe, "<s1>", scope=None, seed=4)
    result = export_lora(subject, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [EXPORT_REPORT, "s1.safetensors"]
    assert result.kohya is None and "only token vectors" in result.notes[0]
    tiny_pipe.load_textual_inversion(str(result.embedding), token="<s1>")
    assert torch.equal(tiny_pipe.text_encoder.get_input_embeddings().weight[-2:], subject.token_embeddings)


@pytest.mark.slow
def test_export_lora_cli(tmp_path, tiny_sd_dir):
    base = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    folder = make_subject(base, "<s1>", scope="kv+q+out", seed=1).save(tmp_path / "subject")
    done = run_cli("export", str(folder), "--format", "lora", "--out", str(tmp_path / "lora"), "--base", str(tiny_sd_dir))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "note: A1111's Lora extension" in done.stdout and "‖Δb‖/‖b‖ = " in done.stdout
    assert {"s1_lora.safetensors", "s1.safetensors", DIFFUSERS_LORA_FILE, EXPORT_REPORT} <= {
        p.name for p in (tmp_path / "lora").iterdir()}
    again = run_cli("export", str(folder), "--format", "lora", "--out", str(tmp_path / "lora"))
    assert again.returncode == 2 and "error:" in again.stderr and "already exists" in again.stderr
    bad = run_cli("export", str(folder), "--format", "lora", "--out", str(tmp_path / "x"), "--energy", "1.2")
    assert bad.returncode == 2 and "--energy must lie in (0, 1]" in bad.stderr
    token_only = make_subject(base, "<s2>", scope=None).save(tmp_path / "cr")
    done = run_cli("export", str(token_only), "--format", "lora", "--out", str(tmp_path / "cr-out"))
    assert done.returncode == 0 and "only token vectors" in done.stdout, done.stderr[-2000:]
