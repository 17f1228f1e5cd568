"""SDXL subjects in the plug-in: both token tables and the deltas load into a stock StableDiffusionXLPipeline, scale
and unload exactly; cross-family loads are refused before anything changes; subjects written before the family seam
(format version 1) load unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _plugin_fixtures import assert_same_state, make_subject, pipeline_state
from safetensors.torch import load_file

import subjectgen_diffusers.subject_parts as parts_module
from subjectgen_diffusers import (
    Subject, SubjectgenError, SubjectPipeline, load_subject, loaded_subjects, set_subject_scale, unload_subject,
)

V1 = Path(__file__).parent / "data" / "subject_v1"


@pytest.fixture
def sdxl_pipe():
    from subjectgen_training.models.tiny_models import build_tiny_sdxl_pipeline

    pipe = build_tiny_sdxl_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image(pipe, prompt: str) -> np.ndarray:
    return pipe(prompt, num_inference_steps=2, height=64, width=64, guidance_scale=5.0, output_type="np",
                generator=torch.Generator().manual_seed(0)).images[0]


def test_sdxl_subject_loads_both_tables_scales_and_unloads_exactly(sdxl_pipe, tmp_path):
    subject = make_subject(sdxl_pipe, "<xl>", scope="kv+q+out", seed=1, magnitude=0.3)
    assert {k: tuple(v.shape) for k, v in subject.token_tables.items()} == {"text_encoder": (2, 32),
                                                                            "text_encoder_2": (2, 48)}
    folder = subject.save(tmp_path / "xl")
    assert json.loads((folder / "subject_config.json").read_text())["family"] == "sdxl"
    before, base_image = pipeline_state(sdxl_pipe), image(sdxl_pipe, "a photo of <xl> <xl>_1")

    assert load_subject(sdxl_pipe, folder) == "<xl>"
    for tokenizer, encoder, table in ((sdxl_pipe.tokenizer, sdxl_pipe.text_encoder, subject.token_embeddings),
                                      (sdxl_pipe.tokenizer_2, sdxl_pipe.text_encoder_2, subject.extra_tables["text_encoder_2"])):
        ids = tokenizer.convert_tokens_to_ids(["<xl>", "<xl>_1"])
        assert torch.equal(encoder.get_input_embeddings().weight[ids], table)
    with_subject = image(sdxl_pipe, "a photo of <xl>")
    assert np.abs(with_subject - base_image).max() > 0.01
    set_subject_scale(sdxl_pipe, "<xl>", 0.0)
    tokens_only = image(sdxl_pipe, "a photo of <xl>")
    assert np.abs(tokens_only - with_subject).max() > 0.001  # the deltas were doing something
    set_subject_scale(sdxl_pipe, "<xl>", 1.0)
    assert np.array_equal(image(sdxl_pipe, "a photo of <xl>"), with_subject)

    unload_subject(sdxl_pipe)
    assert_same_state(before, pipeline_state(sdxl_pipe))
    assert np.array_equal(image(sdxl_pipe, "a photo of <xl> <xl>_1"), base_image)


@pytest.mark.parametrize("direction", ["sd1 into sdxl", "sdxl into sd1"])
def test_cross_family_loads_are_refused_naming_both_and_change_nothing(direction, sdxl_pipe, tiny_pipe, tmp_path):
    sd1_subject, xl_subject = make_subject(tiny_pipe, "<sd>"), make_subject(sdxl_pipe, "<xl>")
    pipe, subject = (sdxl_pipe, sd1_subject) if direction == "sd1 into sdxl" else (tiny_pipe, xl_subject)
    load_subject(pipe, make_subject(pipe, "<kept>", seed=4))
    before = pipeline_state(pipe)
    for source in (subject, subject.save(tmp_path / "s")):
        with pytest.raises(SubjectgenError, match=r"Stable Diffusion 1\.x/2\.x.*`sd1`.*Stable Diffusion XL.*`sdxl`|"
                                                  r"Stable Diffusion XL.*`sdxl`.*Stable Diffusion 1\.x/2\.x.*`sd1`"):
            load_subject(pipe, source)
        assert_same_state(before, pipeline_state(pipe))
    assert set(loaded_subjects(pipe)) == {"<kept>"}


def test_a_failed_sdxl_load_leaves_the_pipeline_exactly_as_it_was(sdxl_pipe, monkeypatch):
    load_subject(sdxl_pipe, make_subject(sdxl_pipe, "<kept>", seed=4))
    before = pipeline_state(sdxl_pipe)
    # fails while applying: after both token tables went in and two layers were attached
    calls, original = [], parts_module.attach_layer_delta

    def fail_on_third_layer(unet, layer, *args):
        calls.append(layer)
        if len(calls) == 3:
            raise RuntimeError("simulated out-of-memory")
        return original(unet, layer, *args)

    monkeypatch.setattr(parts_module, "attach_layer_delta", fail_on_third_layer)
    with pytest.raises(SubjectgenError, match=r"simulated out-of-memory.*unchanged"):
        load_subject(sdxl_pipe, make_subject(sdxl_pipe, "<bad>", scope="kv+q+out", seed=2))
    assert len(calls) == 3
    assert_same_state(before, pipeline_state(sdxl_pipe))
    monkeypatch.undo()
    # fails at the check: the second encoder's table has the first encoder's width
    wrong = make_subject(sdxl_pipe, "<bad>")
    wrong.extra_tables["text_encoder_2"] = torch.zeros(2, 32)
    wrong.config.extra_encoders["text_encoder_2"] = 32
    with pytest.raises(SubjectgenError, match=r"32-d token vectors but this pipeline's `text_encoder_2` is 48-d"):
        load_subject(sdxl_pipe, Subject(wrong.config, wrong.token_embeddings, wrong.deltas, {}, wrong.extra_tables))
    assert_same_state(before, pipeline_state(sdxl_pipe))


def test_subject_pipeline_from_an_sdxl_base_is_an_sdxl_pipeline(tiny_sdxl_dir, tmp_path):
    from diffusers import StableDiffusionXLPipeline
    from subjectgen_training.models.tiny_models import build_tiny_sdxl_pipeline

    folder = make_subject(build_tiny_sdxl_pipeline(), "<xl>", scope="kv").save(tmp_path / "xl")
    pipe = SubjectPipeline.from_pretrained(tiny_sdxl_dir, subject=folder)
    assert isinstance(pipe, StableDiffusionXLPipeline) and pipe.subject_tokens == ["<xl>"]
    pipe.set_progress_bar_config(disable=True)
    stock = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
    load_subject(stock, folder)
    stock.set_progress_bar_config(disable=True)
    assert np.array_equal(image(pipe, "a photo of {}"), image(stock, "a photo of <xl>"))


def test_a_version_1_subject_loads_unchanged(tiny_pipe):
    """tests/data/subject_v1 was written by the code before the family seam (make_v1.py says how); loading it now
    gives the same text features and UNet output that code computed."""
    config = json.loads((V1 / "subject" / "subject_config.json").read_text())
    assert config["format_version"] == 1 and "family" not in config
    expected = load_file(str(V1 / "expected.safetensors"))
    subject = Subject.load(V1 / "subject")
    assert subject.config.family == "sd1" and list(subject.token_tables) == ["text_encoder"]
    token = load_subject(tiny_pipe, V1 / "subject")
    ids = tiny_pipe.tokenizer(f"a photo of {token} {token}_1", padding="max_length", max_length=77,
                              return_tensors="pt").input_ids
    assert torch.equal(ids, expected["input_ids"])
    with torch.no_grad():
        hidden = tiny_pipe.text_encoder(ids)[0]
        out = tiny_pipe.unet(expected["latents"], 500, encoder_hidden_states=hidden).sample
    torch.testing.assert_close(hidden, expected["text_hidden"], rtol=0, atol=1e-6)
    torch.testing.assert_close(out, expected["unet_out"], rtol=0, atol=1e-6)


def test_sdxl_subjects_compress_card_and_refuse_merge(sdxl_pipe, tmp_path):
    from subjectgen_diffusers import MergeError, compress_subject, merge_subjects, render_subject_card

    subject = make_subject(sdxl_pipe, "<xl>", scope="kv", seed=6)
    folder = subject.save(tmp_path / "xl")
    small = Subject.load(compress_subject(folder, tmp_path / "small", rank=64))  # full rank: the same deltas
    assert torch.equal(small.extra_tables["text_encoder_2"], subject.extra_tables["text_encoder_2"])
    layer = subject.config.layers[0]
    torch.testing.assert_close(small.deltas[layer]["to_k"], subject.deltas[layer]["to_k"], rtol=1e-4, atol=1e-5)
    card = render_subject_card(folder)
    assert "StableDiffusionXLPipeline.from_pretrained" in card and "stable-diffusion-xl" in card
    with pytest.raises(MergeError, match=r"merging Stable Diffusion XL subjects is not supported yet"):
        merge_subjects(sdxl_pipe, [subject, make_subject(sdxl_pipe, "<xl2>", scope="kv", seed=7)],
                       regularization_captions=["a photo of a person"])
