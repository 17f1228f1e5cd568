"""load_subject on bad input: every failure names the problem and leaves the pipeline exactly as it was."""

from __future__ import annotations

import pickle

import pytest
import torch
from _plugin_fixtures import assert_same_state, make_subject, pipeline_state, unet_out
from safetensors.torch import save_file

import subjectgen_diffusers.subject_parts as parts_module
from subjectgen_diffusers import SubjectgenError, load_subject, loaded_subjects, set_subject_scale, unload_subject


@pytest.fixture
def loaded_pipe(tiny_pipe):
    """A pipeline that already holds one subject, so failures must also leave that one untouched."""
    load_subject(tiny_pipe, make_subject(tiny_pipe, "<cd>", scope="kv", seed=9))
    return tiny_pipe


def _fails_cleanly(pipe, source, match: str, **kwargs) -> None:
    before = pipeline_state(pipe)
    output_before = unet_out(pipe, "a <cd> person")
    with pytest.raises(SubjectgenError, match=match):
        load_subject(pipe, source, **kwargs)
    assert_same_state(before, pipeline_state(pipe))
    assert torch.equal(unet_out(pipe, "a <cd> person"), output_before)


def test_our_folder_round_trips_with_optional_rename(tmp_path, tiny_pipe):
    subject = make_subject(tiny_pipe, "<s1>", scope="kv+q+out", seed=5)
    folder = subject.save(tmp_path / "subject")
    assert load_subject(tiny_pipe, folder) == "<s1>"
    as_folder = unet_out(tiny_pipe, "a <s1>")
    unload_subject(tiny_pipe)
    assert load_subject(tiny_pipe, subject) == "<s1>"
    assert torch.equal(unet_out(tiny_pipe, "a <s1>"), as_folder)
    assert load_subject(tiny_pipe, folder, token="<alice>") == "<alice>"
    assert set(loaded_subjects(tiny_pipe)) == {"<s1>", "<alice>"}
    assert loaded_subjects(tiny_pipe)["<alice>"].method == "cd+cr"
    # fp16 storage loads too (deltas are upcast for the sum, cast to the UNet's dtype for the projection)
    unload_subject(tiny_pipe)
    subject.save(tmp_path / "half", dtype=torch.float16)
    load_subject(tiny_pipe, tmp_path / "half")
    torch.testing.assert_close(unet_out(tiny_pipe, "a <s1>"), as_folder, rtol=1e-2, atol=1e-2)
    # low-rank factors at full rank (64, the widest layer) rebuild the same deltas
    unload_subject(tiny_pipe)
    load_subject(tiny_pipe, subject.save(tmp_path / "factored", rank=64))
    torch.testing.assert_close(unet_out(tiny_pipe, "a <s1>"), as_folder, rtol=1e-4, atol=1e-4)


def test_embedding_for_another_text_encoder_width(tmp_path, loaded_pipe):
    save_file({"<sd21>": torch.randn(2, 1024)}, str(tmp_path / "learned_embeds.safetensors"))
    _fails_cleanly(loaded_pipe, tmp_path / "learned_embeds.safetensors", r"1024-d token vectors .* 32-d")


def test_delta_for_layers_this_unet_does_not_have(tmp_path, loaded_pipe):
    subject = make_subject(loaded_pipe, "<s1>", scope="kv")
    layer = subject.config.layers[0]
    renamed = layer.replace("down_blocks.0", "down_blocks.3")
    subject.deltas[renamed] = subject.deltas.pop(layer)
    subject.config.layers = sorted(subject.deltas)
    _fails_cleanly(loaded_pipe, subject.save(tmp_path / "s"), r"does not have.*another base model")


def test_delta_with_the_wrong_shape(tmp_path, loaded_pipe):
    subject = make_subject(loaded_pipe, "<s1>", scope="kv")
    layer = subject.config.layers[-1]
    subject.deltas[layer]["to_k"] = torch.zeros(32, 48)
    _fails_cleanly(loaded_pipe, subject.save(tmp_path / "s"), r"to_k` has shape \(32, 48\).*\(32, 32\)")


def test_token_already_in_the_vocabulary(tmp_path, loaded_pipe):
    save_file({"person": torch.randn(1, 32)}, str(tmp_path / "learned_embeds.safetensors"))
    _fails_cleanly(loaded_pipe, tmp_path, r"'person' is already in the tokenizer's vocabulary")
    _fails_cleanly(loaded_pipe, make_subject(loaded_pipe, "<cd>"), r"`<cd>` is already loaded")


def test_missing_and_unknown_sources(tmp_path, loaded_pipe):
    _fails_cleanly(loaded_pipe, tmp_path / "nowhere" / "subject", r"does not exist")
    (tmp_path / "notes.txt").write_text("hello")
    _fails_cleanly(loaded_pipe, tmp_path, r"holds no subject.*notes.txt")
    _fails_cleanly(loaded_pipe, tmp_path / "notes.txt", r"unknown format")
    save_file({"a": torch.randn(1, 32), "b": torch.randn(1, 32)}, str(tmp_path / "two.safetensors"))
    _fails_cleanly(loaded_pipe, tmp_path / "two.safetensors", r"unknown embedding layout")
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    _fails_cleanly(loaded_pipe, tmp_path / "broken.safetensors", r"not a readable safetensors file")


class _Payload:
    """Unpickling this would create a file: proof that a hostile pickle ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_with_anything_but_tensors_is_refused_without_running_it(tmp_path, loaded_pipe):
    marker = tmp_path / "pwned"
    torch.save({"<evil>": torch.randn(32), "payload": _Payload(marker)}, tmp_path / "learned_embeds.bin")
    _fails_cleanly(loaded_pipe, tmp_path / "learned_embeds.bin", r"weights_only=True", token="<evil>")
    assert not marker.exists()
    (tmp_path / "plain.pt").write_bytes(pickle.dumps({"<evil>": _Payload(marker)}, protocol=2))
    _fails_cleanly(loaded_pipe, tmp_path / "plain.pt", r"only safetensors, or pickles holding nothing but tensors")
    assert not marker.exists()


def test_failure_while_applying_rolls_everything_back(loaded_pipe, monkeypatch):
    subject = make_subject(loaded_pipe, "<s1>", scope="kv+q+out", seed=2)
    calls = []
    original = parts_module.attach_layer_delta

    def fail_on_third_layer(unet, layer, *args):
        calls.append(layer)
        if len(calls) == 3:
            raise RuntimeError("simulated out-of-memory")
        return original(unet, layer, *args)

    monkeypatch.setattr(parts_module, "attach_layer_delta", fail_on_third_layer)
    _fails_cleanly(loaded_pipe, subject, r"could not load subject `<s1>` \(simulated out-of-memory\).*unchanged")
    assert len(calls) == 3
    assert set(loaded_subjects(loaded_pipe)) == {"<cd>"}


def test_unload_and_scale_of_unknown_tokens(loaded_pipe):
    with pytest.raises(SubjectgenError, match=r"no subject `<x>` is loaded; loaded: \['<cd>'\]"):
        unload_subject(loaded_pipe, "<x>")
    with pytest.raises(SubjectgenError, match="no subject `<x>`"):
        set_subject_scale(loaded_pipe, "<x>", 0.5)


def test_non_finite_and_corrupt_subjects(tmp_path, loaded_pipe):
    subject = make_subject(loaded_pipe, "<s1>", scope="kv")
    subject.deltas[subject.config.layers[0]]["to_v"][0, 0] = float("nan")
    _fails_cleanly(loaded_pipe, subject, r"NaN/inf")
    folder = make_subject(loaded_pipe, "<s2>", scope=None).save(tmp_path / "s")
    (folder / "subject_config.json").write_text('{"method": "cr", "token": "<s2>", "num_vectors": 2, "text_hidden_size": 32, "lr": 1}')
    _fails_cleanly(loaded_pipe, folder, r"unknown keys \['lr'\]")
