"""The model-family seam: each family computes the UNet's conditioning exactly as its diffusers pipeline does,
names its attention modules as kohya/ComfyUI read them, and is recognised from configs alone."""

from __future__ import annotations

import pytest
import torch

from subjectgen_diffusers.families import SD1, SDXL, family_of_base, family_of_pipeline, get_family


@pytest.fixture(scope="module")
def sdxl_pipe():
    from subjectgen_training.models.tiny_models import build_tiny_sdxl_pipeline

    return build_tiny_sdxl_pipeline(seed=0)


def _ids(pipe, slot, prompt):
    tokenizer = getattr(pipe, slot.tokenizer)
    return tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def test_sdxl_conditioning_is_the_pipelines(sdxl_pipe):
    prompt = "a photo of a person on a beach"
    with torch.no_grad():
        embeds, _, pooled, _ = sdxl_pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
        ours = SDXL.unet_conditioning(sdxl_pipe, [_ids(sdxl_pipe, s, prompt) for s in SDXL.text_encoders],
                                      original_size=(96, 64), crop=(8, 0), target_size=(64, 48))
    time_ids = sdxl_pipe._get_add_time_ids((96, 64), (8, 0), (64, 48), dtype=torch.float32,
                                           text_encoder_projection_dim=sdxl_pipe.text_encoder_2.config.projection_dim)
    assert ours.encoder_hidden_states.shape == (1, 77, 32 + 48)
    torch.testing.assert_close(ours.encoder_hidden_states, embeds, rtol=0, atol=0)
    torch.testing.assert_close(ours.added_cond_kwargs["text_embeds"], pooled, rtol=0, atol=0)
    torch.testing.assert_close(ours.added_cond_kwargs["time_ids"], time_ids, rtol=0, atol=0)


def test_sd1_conditioning_is_the_pipelines(tiny_pipe):
    prompt = "a photo of a person"
    with torch.no_grad():
        embeds, _ = tiny_pipe.encode_prompt(prompt, "cpu", 1, False)
        ours = SD1.unet_conditioning(tiny_pipe, [_ids(tiny_pipe, SD1.text_encoders[0], prompt)])
    torch.testing.assert_close(ours.encoder_hidden_states, embeds, rtol=0, atol=0)
    assert ours.added_cond_kwargs is None


def test_families_are_recognised_from_pipelines_and_from_configs(tiny_pipe, sdxl_pipe, tiny_sd_dir, tiny_sdxl_dir):
    assert family_of_pipeline(tiny_pipe) is SD1 and family_of_pipeline(sdxl_pipe) is SDXL
    assert family_of_base(tiny_sd_dir) is SD1 and family_of_base(tiny_sdxl_dir) is SDXL
    assert get_family("sdxl") is SDXL
    assert SDXL.text_widths(sdxl_pipe) == {"text_encoder": 32, "text_encoder_2": 48}
    assert SDXL.pipeline_class() is type(sdxl_pipe) and SD1.pipeline_class() is type(tiny_pipe)


def test_sdxl_kohya_names_are_what_diffusers_maps_back_to_the_unet(sdxl_pipe):
    """Our ldm/SGM names, read by diffusers' own SGM->diffusers block mapping, land on exactly the UNet's layers."""
    from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers

    unet = sdxl_pipe.unet
    layers = SDXL.cd_layers(unet)
    assert layers and all(layer.endswith("attn2") for layer in layers)
    names = {SDXL.kohya_module(layer, proj, unet.config): f"lora_unet_{layer}.{proj}".replace(".", "_")
             for layer in layers for proj in ("to_k", "to_out.0")}
    assert all("input_blocks" in n or "middle_block" in n or "output_blocks" in n for n in names)
    mapped = _maybe_map_sgm_blocks_to_diffusers({f"{n}.lora_down.weight": n for n in names}, unet.config)
    renamed = {  # the block words diffusers' kohya converter then renames (_convert_unet_lora_key)
        key.removesuffix(".lora_down.weight").replace("input_blocks", "down_blocks")
        .replace("middle_block", "mid_block").replace("output_blocks", "up_blocks"): ours
        for key, ours in mapped.items()}
    assert renamed == {expected: ours for ours, expected in names.items()}


# -- a family is one module plus one registration line -----------------------------------------------------------------
class _WideFamily(__import__("subjectgen_diffusers.families", fromlist=["ModelFamily"]).ModelFamily):
    """A test-only family, all of it: SD 1.x's layout with a 48-wide text encoder, its own embedding key and kohya
    prefix (so the exporter is seen asking the family)."""

    from subjectgen_diffusers.families import TextEncoderSlot as _Slot

    name, title, pipeline_class_name, hub_tag, native_resolution = "test-wide", "Test Wide SD", \
        "StableDiffusionPipeline", "test-wide", 64
    text_encoders = (_Slot("text_encoder", "tokenizer", "wide_emb"),)

    def unet_conditioning(self, components, input_ids, **sizes):
        return SD1.unet_conditioning(components, input_ids)

    def matches(self, components, unet_config):
        return SD1.matches(components, unet_config) and unet_config.get("cross_attention_dim") == 48

    def kohya_module(self, layer, proj, unet_config=None):
        return "lora_wide_" + f"{layer}.{proj}".replace(".", "_")


@pytest.fixture
def wide_family():
    from subjectgen_diffusers.families import register_family, unregister_family

    family = register_family(_WideFamily())  # the one registration line
    yield family
    unregister_family(family.name)


def test_a_test_only_family_loads_refuses_and_exports_through_the_seam(wide_family, tiny_pipe, tmp_path):
    from _plugin_fixtures import assert_same_state, make_subject, pipeline_state
    from safetensors.torch import load_file

    from subjectgen_diffusers import SubjectgenError, export_lora, load_subject, unload_subject
    from subjectgen_training.models.tiny_models import build_tiny_sd_pipeline

    wide = build_tiny_sd_pipeline(seed=0, text_hidden=48)
    assert family_of_pipeline(wide) is wide_family and family_of_pipeline(tiny_pipe) is SD1
    subject = make_subject(wide, "<w>", scope="kv")
    assert subject.config.family == "test-wide"
    before = pipeline_state(wide)
    load_subject(wide, subject.save(tmp_path / "w"))
    unload_subject(wide)
    assert_same_state(before, pipeline_state(wide))
    with pytest.raises(SubjectgenError, match=r"Stable Diffusion 1\.x/2\.x \(family `sd1`.*Test Wide SD \(family `test-wide`\)"):
        load_subject(wide, make_subject(tiny_pipe, "<sd>"))
    assert_same_state(before, pipeline_state(wide))
    result = export_lora(subject, tmp_path / "lora")
    assert set(load_file(str(result.embedding))) == {"wide_emb"}
    assert all(key.startswith(("lora_wide_", "bundle_emb.w.wide_emb")) for key in load_file(str(result.kohya)))


def test_loader_and_exporter_name_no_family():
    """What differs between families is asked of the family: no family name, encoder, embedding key or block name
    is written in the loader or the LoRA exporter (docstrings aside)."""
    from _cli import REPO_ROOT
    from _source import string_literals

    words = {"sd1", "sdxl", "text_encoder_2", "tokenizer_2", "clip_l", "clip_g", "emb_params", "input_blocks",
             "output_blocks", "middle_block", "lora_unet_", "attn2", "text_time", "StableDiffusionXLPipeline"}
    for name in ("loader.py", "lora_export.py"):
        path = REPO_ROOT / "subjectgen_diffusers" / name
        literals = string_literals(path)
        assert not {text for text in literals if any(word in text for word in words)}, name
        code = path.read_text(encoding="utf-8")
        assert "import SD1" not in code and "import SDXL" not in code and "families.sd" not in code, name
