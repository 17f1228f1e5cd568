"""Export: our subject -> diffusers textual inversion + Custom Diffusion weights, and -> A1111 embeddings."""

from __future__ import annotations

import pytest
import torch
from _plugin_fixtures import cross_attention_layers, encode, make_subject, unet_out
from _cli import run_cli
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from subjectgen_diffusers import SubjectgenError, export_a1111, export_diffusers, load_subject


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_sd_dir):
    root = tmp_path_factory.mktemp("export")
    base = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    subject = make_subject(base, "<s1>", scope="kv+q+out", seed=7, magnitude=0.1)
    folder = subject.save(root / "subject")
    written = export_diffusers(subject, root / "diffusers", base_unet=base.unet)
    return subject, folder, root / "diffusers", written


def test_diffusers_export_round_trips_through_our_loader(tiny_sd_dir, exported):
    subject, folder, out, written = exported
    assert sorted(p.name for p in written) == ["learned_embeds.safetensors", "pytorch_custom_diffusion_weights.safetensors"]
    keys = load_file(str(out / "pytorch_custom_diffusion_weights.safetensors"))
    layer = cross_attention_layers(StableDiffusionPipeline.from_pretrained(tiny_sd_dir).unet)[0]
    assert f"{layer}.processor.to_k_custom_diffusion.weight" in keys
    assert f"{layer}.processor.to_out_custom_diffusion.0.bias" in keys

    ours = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    load_subject(ours, folder)
    round_trip = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    assert load_subject(round_trip, out) == "<s1>"
    torch.testing.assert_close(unet_out(round_trip, "a <s1>"), unet_out(ours, "a <s1>"), rtol=1e-5, atol=1e-5)


def test_diffusers_export_is_what_diffusers_own_processors_consume(tiny_sd_dir, exported):
    """The files load with stock diffusers: load_textual_inversion for the token, Custom Diffusion processors built
    from the weights file (``_process_custom_diffusion``, the part of load_attn_procs that works in 0.42)."""
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0

    subject, folder, out, _ = exported
    stock = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    stock.load_textual_inversion(str(out))
    assert stock.maybe_convert_prompt("a <s1>", stock.tokenizer) == "a <s1> <s1>_1"
    processors = stock.unet._process_custom_diffusion(load_file(str(out / "pytorch_custom_diffusion_weights.safetensors")))
    full = {name: processors.get(name) or CustomDiffusionAttnProcessor2_0(train_kv=False, train_q_out=False)
            for name in stock.unet.attn_processors}
    stock.unet.set_attn_processor(full)

    ours = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    load_subject(ours, folder)
    assert torch.equal(encode(stock, "a <s1>"), encode(ours, "a <s1>"))
    torch.testing.assert_close(unet_out(stock, "a <s1>"), unet_out(ours, "a <s1>"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a1111_export_loads_in_stock_diffusers(tmp_path, tiny_pipe, suffix):
    subject = make_subject(tiny_pipe, "<s1>", scope=None, seed=3)
    path = export_a1111(subject, tmp_path / f"s1{suffix}")
    tiny_pipe.load_textual_inversion(str(path), token="<a1111>")
    vectors = tiny_pipe.text_encoder.get_input_embeddings().weight[-2:]
    assert torch.equal(vectors, subject.token_embeddings)
    with_deltas = make_subject(tiny_pipe, "<s2>", scope="kv")
    with pytest.raises(SubjectgenError, match="--token-only"):
        export_a1111(with_deltas, tmp_path / "s2.safetensors")
    assert export_a1111(with_deltas, tmp_path / "s2.safetensors", token_only=True).is_file()
    with pytest.raises(SubjectgenError, match="has Custom Diffusion deltas"):
        export_diffusers(with_deltas, tmp_path / "no-base")


def test_export_cli(tmp_path, tiny_sd_dir, exported):
    _, folder, _, _ = exported
    done = run_cli("export", str(folder), "--out", str(tmp_path / "d"), "--base", str(tiny_sd_dir), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "d" / "pytorch_custom_diffusion_weights.safetensors").is_file()
    refused = run_cli("export", str(folder), "--out", str(tmp_path / "a"), "--format", "a1111", timeout=300)
    assert refused.returncode == 2 and "error:" in refused.stderr and "--token-only" in refused.stderr
    done = run_cli("export", str(folder), "--out", str(tmp_path / "a"), "--format", "a1111", "--token-only", timeout=300)
    assert done.returncode == 0 and (tmp_path / "a" / "s1.safetensors").is_file(), done.stderr[-2000:]
