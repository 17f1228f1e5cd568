"""Custom Diffusion's constrained merge (``merge_subjects``, ``subjectgen merge``) on tiny in-process models.

The promise: the merged projection computes what each subject's own trained projection computes on that subject's
token-caption features (the constraint), the merged subject loads, exports and unloads like any other, and what cannot
be merged is refused with a clear error.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from _plugin_fixtures import (assert_same_state, cross_attention_layers, make_subject, pipeline_state, unet_out)

from subjectgen_diffusers import load_subject, loaded_subjects, unload_subject
from subjectgen_diffusers.merge import MergeError, merge_subjects
from subjectgen_diffusers.subject_format import Subject

REG = ["a photo of a person", "a person on a beach", "an oil painting of a person", "a dog in the snow",
       "a close-up photo of a person laughing", "a pencil sketch of a house"]
CAPTION = "a photo of {} person"


def _subjects(pipe, scope="kv"):
    # token vectors of word-like size, so each token moves the text features (as trained tokens do)
    generator = torch.Generator().manual_seed(7)
    a = make_subject(pipe, "<s1>", scope=scope, seed=1, vectors=torch.randn(1, 32, generator=generator) * 0.5)
    b = make_subject(pipe, "<s2>", scope=scope, seed=2, vectors=torch.randn(2, 32, generator=generator) * 0.5)
    return a, b


def _token_features(pipe, subject: Subject, token: str) -> torch.Tensor:
    """The text features of the subject's caption from its token to the end of text, with only it loaded."""
    load_subject(pipe, subject)
    try:
        words = " ".join([token] + [f"{token}_{i}" for i in range(1, dict(subject.config.tokens)[token])])
        ids = pipe.tokenizer(CAPTION.format(words), padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            states = pipe.text_encoder(ids)[0][0]
        start = int((ids[0] == pipe.tokenizer.convert_tokens_to_ids(token)).nonzero()[0])
        end = int((ids[0] == pipe.tokenizer.eos_token_id).nonzero()[0])
        return states[start : end + 1].double()
    finally:
        unload_subject(pipe, subject.config.token)


def _projection(pipe, layer: str, proj: str, extra: torch.Tensor | None = None) -> torch.Tensor:
    weight = getattr(pipe.unet.get_submodule(layer), proj).weight.detach().double()
    return weight if extra is None else weight + extra.double()


def test_merged_weights_reproduce_each_subject_on_its_token_features(tiny_pipe):
    a, b = _subjects(tiny_pipe)
    merged = merge_subjects(tiny_pipe, [a, b], regularization_captions=REG)
    assert [t for t, _ in merged.config.tokens] == ["<s1>", "<s2>"]
    checked = 0
    for subject in (a, b):
        features = _token_features(tiny_pipe, subject, subject.config.token)
        for layer in cross_attention_layers(tiny_pipe.unet):
            for proj in ("to_k", "to_v"):
                wanted = features @ _projection(tiny_pipe, layer, proj, subject.deltas[layer][proj]).T
                got = features @ _projection(tiny_pipe, layer, proj, merged.deltas[layer][proj]).T
                added = features @ _projection(tiny_pipe, layer, proj,
                                               a.deltas[layer][proj] + b.deltas[layer][proj]).T
                scale = wanted.abs().max()
                # float32 storage of the merged delta bounds the agreement (~1e-6 relative); adding the deltas
                # instead misses by the other subject's change (~1e-1 relative with these magnitudes)
                assert (got - wanted).abs().max() / scale < 1e-4
                assert (added - wanted).abs().max() / scale > 1e-2
                checked += 1
    assert checked == 2 * 2 * len(cross_attention_layers(tiny_pipe.unet))


def test_merge_stays_closer_to_the_base_than_adding_on_ordinary_captions(tiny_pipe):
    a, b = _subjects(tiny_pipe)
    merged = merge_subjects(tiny_pipe, [a, b], regularization_captions=REG)
    ids = tiny_pipe.tokenizer(REG, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        features = tiny_pipe.text_encoder(ids)[0].reshape(-1, 32).double()
    for layer in cross_attention_layers(tiny_pipe.unet):
        for proj in ("to_k", "to_v"):
            change_merged = (features @ merged.deltas[layer][proj].double().T).norm()
            change_added = (features @ (a.deltas[layer][proj] + b.deltas[layer][proj]).double().T).norm()
            assert change_merged < change_added


def test_merged_subject_saves_loads_and_unloads_to_the_base_exactly(tiny_pipe, tmp_path):
    a, b = _subjects(tiny_pipe)
    merge_subjects(tiny_pipe, [a, b], regularization_captions=REG, out=tmp_path / "merged")
    config = json.loads((tmp_path / "merged" / "subject_config.json").read_text())
    assert config["extra_tokens"] == {"<s2>": 2}
    assert config["training"]["merge"]["regularization_captions"] == REG
    assert config["training"]["merge"]["constraint_captions"] == {"<s1>": ["a photo of <s1> person"],
                                                                  "<s2>": ["a photo of <s2> <s2>_1 person"]}
    before_state, before_out = pipeline_state(tiny_pipe), unet_out(tiny_pipe, "a photo of a person")
    token = load_subject(tiny_pipe, tmp_path / "merged")
    assert token == "<s1>" and loaded_subjects(tiny_pipe)[token].tokens == ["<s1>", "<s2>"]
    assert tiny_pipe.maybe_convert_prompt("<s2>", tiny_pipe.tokenizer) == "<s2> <s2>_1"
    assert not torch.equal(unet_out(tiny_pipe, "a photo of <s1> and <s2> <s2>_1"), before_out)
    unload_subject(tiny_pipe, token)
    assert_same_state(before_state, pipeline_state(tiny_pipe))
    assert torch.equal(unet_out(tiny_pipe, "a photo of a person"), before_out)


def test_merged_subject_exports_every_token(tiny_pipe, tmp_path):
    from safetensors.torch import load_file

    from subjectgen_diffusers import export_diffusers, export_lora

    a, b = _subjects(tiny_pipe)
    merged = merge_subjects(tiny_pipe, [a, b], regularization_captions=REG)
    written = export_diffusers(merged, tmp_path / "diffusers", base_unet=tiny_pipe.unet)
    names = sorted(p.name for p in written)
    assert names == ["learned_embeds-s2.safetensors", "learned_embeds.safetensors",
                     "pytorch_custom_diffusion_weights.safetensors"]
    assert torch.equal(load_file(str(tmp_path / "diffusers" / "learned_embeds-s2.safetensors"))["<s2>"],
                       b.token_embeddings)
    lora = export_lora(merged, tmp_path / "lora")
    assert torch.equal(load_file(str(tmp_path / "lora" / "s2.safetensors"))["emb_params"], b.token_embeddings)
    assert torch.equal(load_file(str(tmp_path / "lora" / "s1.safetensors"))["emb_params"], a.token_embeddings)
    assert lora.extra_embeddings == [tmp_path / "lora" / "s2.safetensors"]


def test_token_only_subject_keeps_its_token_under_the_others_deltas(tiny_pipe):
    a, _ = _subjects(tiny_pipe)
    token_only = make_subject(tiny_pipe, "<t>", scope=None, vectors=torch.randn(1, 32) * 0.5)
    merged = merge_subjects(tiny_pipe, [a, token_only], regularization_captions=REG)
    features = _token_features(tiny_pipe, token_only, "<t>")
    layer = cross_attention_layers(tiny_pipe.unet)[0]
    change = features @ merged.deltas[layer]["to_k"].double().T
    assert change.abs().max() / (features @ _projection(tiny_pipe, layer, "to_k").T).abs().max() < 1e-4


def test_merge_refuses_different_bases_duplicate_tokens_and_nothing_to_merge(tiny_pipe):
    a, b = _subjects(tiny_pipe)
    other_base = Subject(dataclasses.replace(b.config, base_model="another-model"), b.token_embeddings, b.deltas)
    with pytest.raises(MergeError, match="different base models.*another-model"):
        merge_subjects(tiny_pipe, [a, other_base], regularization_captions=REG)
    same_token = Subject(dataclasses.replace(b.config, token="<s1>"), b.token_embeddings, b.deltas)
    with pytest.raises(MergeError, match="token '<s1>' is in both"):
        merge_subjects(tiny_pipe, [a, same_token], regularization_captions=REG)
    only_tokens = [make_subject(tiny_pipe, f"<t{i}>", scope=None) for i in range(2)]
    with pytest.raises(MergeError, match="nothing to merge"):
        merge_subjects(tiny_pipe, only_tokens, regularization_captions=REG)
    with pytest.raises(MergeError, match="two or more"):
        merge_subjects(tiny_pipe, [a], regularization_captions=REG)


@pytest.mark.slow
def test_merge_cli_writes_a_loadable_subject_and_refuses_with_a_clear_error(tiny_sd_dir, tiny_pipe, tmp_path):
    from _cli import run_cli

    a, b = _subjects(tiny_pipe)
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    done = run_cli("merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "ab"),
                   "--base", str(tiny_sd_dir), "--threads", "1")
    assert done.returncode == 0, done.stderr
    merged = Subject.load(tmp_path / "ab")
    assert [t for t, _ in merged.config.tokens] == ["<s1>", "<s2>"]
    assert "a photo of a person" in merged.config.training["merge"]["regularization_captions"]
    refused = run_cli("merge", str(tmp_path / "a"), str(tmp_path / "a"), "--out", str(tmp_path / "aa"),
                      "--base", str(tiny_sd_dir), "--threads", "1")
    assert refused.returncode != 0 and "error:" in refused.stderr and "is in both" in refused.stderr
    assert not (tmp_path / "aa").exists()
