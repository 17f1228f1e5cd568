"""Files made by other tools, built here the way those tools write them, loaded and applied for real."""

from __future__ import annotations

import pytest
import torch
from _plugin_fixtures import (
    cross_attention_layers,
    encode,
    make_subject,
    patch_weights,
    save_diffusers_custom_diffusion,
    unet_out,
    word_vectors,
)
from diffusers.models.attention_processor import AttnProcessor2_0
from safetensors.torch import save_file

from subjectgen_diffusers import load_subject, loaded_subjects, read_subject


def _reference_output(pipe, trained, prompt: str) -> torch.Tensor:
    """Manual patch: the UNet's own to_k/to_v (and q/out) weights set to the trained ones, token via diffusers TI."""
    patch_weights(pipe, trained)
    pipe.load_textual_inversion(trained.token_embeddings, token=trained.config.token)
    return unet_out(pipe, prompt)


@pytest.mark.parametrize(
    "scope, safe, token_as_bin",
    [("kv", True, False), ("kv", False, False), ("kv", True, True), ("kv+q+out", True, False)],
    ids=["kv-safetensors", "kv-bin", "kv-safetensors-named-bin", "q-out-safetensors"],
)
def test_diffusers_custom_diffusion_folder_equals_a_manual_weight_patch(tmp_path, scope, safe, token_as_bin):
    from subjectgen_training.models.tiny_models import build_tiny_sd_pipeline

    pipe = build_tiny_sd_pipeline(seed=0)
    trained = make_subject(pipe, "<new1>", scope=scope, seed=11, vectors=torch.randn(1, 32) * 0.02)
    save_diffusers_custom_diffusion(pipe, tmp_path, trained, safe=safe, token_as_bin=token_as_bin)
    base = unet_out(pipe, "a photo of a person")

    assert load_subject(pipe, tmp_path) == "<new1>"
    entry = loaded_subjects(pipe)["<new1>"]
    assert entry.layers == cross_attention_layers(pipe.unet)
    ours = unet_out(pipe, "a photo of a <new1>")
    assert (ours - base).abs().max() > 1e-3  # the attention weights were applied, not only the token

    reference_pipe = build_tiny_sd_pipeline(seed=0)
    reference = _reference_output(reference_pipe, trained, "a photo of a <new1>")
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_stock_diffusers_load_attn_procs_still_applies_nothing(tmp_path, tiny_pipe):
    """diffusers 0.42 (huggingface/diffusers#9320): ``unet.load_attn_procs`` on a Custom Diffusion folder is a no-op.

    If this test fails, diffusers changed that behaviour: re-check whether users still need our reader.
    """
    trained = make_subject(tiny_pipe, "<new1>", scope="kv", seed=11, vectors=torch.randn(1, 32))
    save_diffusers_custom_diffusion(tiny_pipe, tmp_path, trained)
    before = unet_out(tiny_pipe, "a photo of a person")
    try:
        tiny_pipe.unet.load_attn_procs(str(tmp_path), weight_name="pytorch_custom_diffusion_weights.safetensors")
    except ValueError:
        pass  # also a way of applying nothing
    assert all(isinstance(p, AttnProcessor2_0) for p in tiny_pipe.unet.attn_processors.values())
    assert torch.equal(unet_out(tiny_pipe, "a photo of a person"), before)


def test_cross_initialization_learned_embeds_expand_in_order(tmp_path, tiny_pipe):
    words = ["red", "big", "dog"]
    vectors = word_vectors(tiny_pipe, words)
    # the Cross Initialization repository's layout, keys deliberately not in order
    torch.save({"<tok>_v2": vectors[2], "<tok>_v0": vectors[0], "<tok>_v1": vectors[1]}, tmp_path / "learned_embeds.bin")
    assert load_subject(tiny_pipe, tmp_path / "learned_embeds.bin", token="<tok>") == "<tok>"
    assert tiny_pipe.maybe_convert_prompt("a <tok> runs", tiny_pipe.tokenizer) == "a <tok> <tok>_1 <tok>_2 runs"
    assert torch.equal(encode(tiny_pipe, "a <tok> runs"), encode(tiny_pipe, "a red big dog runs"))
    assert loaded_subjects(tiny_pipe)["<tok>"].layers == []


def test_cross_initialization_with_more_than_ten_vectors_sorts_numerically(tmp_path, tiny_pipe):
    vectors = torch.randn(12, 32)
    save_file({f"<p>_v{i}": vectors[i] for i in range(12)}, str(tmp_path / "learned_embeds.safetensors"))
    subject = read_subject(tmp_path)
    assert subject.config.token == "<p>" and torch.equal(subject.token_embeddings, vectors)


def test_diffusers_textual_inversion_file(tmp_path, tiny_pipe):
    vectors = word_vectors(tiny_pipe, ["tall", "woman"])
    save_file({"<ti>": vectors}, str(tmp_path / "learned_embeds.safetensors"))
    assert load_subject(tiny_pipe, tmp_path) == "<ti>"
    assert torch.equal(encode(tiny_pipe, "a <ti>"), encode(tiny_pipe, "a tall woman"))
    assert load_subject(tiny_pipe, tmp_path / "learned_embeds.safetensors", token="<renamed>") == "<renamed>"
    assert torch.equal(encode(tiny_pipe, "a <renamed>"), encode(tiny_pipe, "a tall woman"))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a1111_embedding(tmp_path, tiny_pipe, suffix):
    vectors = word_vectors(tiny_pipe, ["old", "man"])
    path = tmp_path / f"grandpa{suffix}"
    if suffix == ".pt":  # what AUTOMATIC1111's webui writes
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": "grandpa", "step": 500,
                    "sd_checkpoint": "abc123", "sd_checkpoint_name": "v1-5-pruned"}, path)
    else:
        save_file({"emb_params": vectors}, str(path))
    assert load_subject(tiny_pipe, path, token="<grandpa>") == "<grandpa>"
    assert torch.equal(encode(tiny_pipe, "an <grandpa>"), encode(tiny_pipe, "an old man"))
    if suffix == ".pt":  # the stored name is used when no token is given
        assert load_subject(tiny_pipe, path) == "grandpa"
