"""SDXL export, checked for real with stock diffusers (no plug-in code on the reading side): the peft-keyed LoRA plus
one load_textual_inversion per encoder (clip_l -> text_encoder/tokenizer, clip_g -> text_encoder_2/tokenizer_2)
reproduce the plug-in's image, and so does the kohya file with SDXL's ldm/SGM block names, read by diffusers' own
kohya/SGM converter."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _cli import run_cli
from _plugin_fixtures import make_subject
from safetensors.torch import load_file, save_file

from subjectgen_diffusers import export_a1111, export_diffusers, load_subject

PROMPT = "a photo of <xl> on a beach"


@pytest.fixture(scope="module")
def stock(tiny_sdxl_dir):
    from diffusers import StableDiffusionXLPipeline

    def load():
        pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return load


def image(pipe, prompt: str = PROMPT) -> np.ndarray:
    return pipe(prompt, num_inference_steps=2, height=64, width=64, guidance_scale=5.0, output_type="np",
                generator=torch.Generator().manual_seed(0)).images[0]


def stock_textual_inversion(pipe, embedding_file, token="<xl>") -> None:
    tables = load_file(str(embedding_file))
    assert {k: v.shape[1] for k, v in tables.items()} == {"clip_l": 32, "clip_g": 48}
    pipe.load_textual_inversion(tables["clip_l"], token=token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(tables["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)


def test_cli_lora_export_is_reproduced_by_stock_diffusers(stock, tmp_path):
    plugin = stock()
    subject = make_subject(plugin, "<xl>", scope="kv+q+out", seed=1, magnitude=0.3)
    folder = subject.save(tmp_path / "xl")
    load_subject(plugin, folder)
    ours = image(plugin)

    out = tmp_path / "lora"
    done = run_cli("export", str(folder), "--out", str(out), "--format", "lora")
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "export.json").read_text())["family"] == "sdxl"
    reader = stock()
    reader.load_lora_weights(str(out), weight_name="pytorch_lora_weights.safetensors")
    stock_textual_inversion(reader, out / "xl.safetensors")
    assert np.abs(image(reader) - ours).max() <= 1 / 255
    assert np.abs(image(stock()) - ours).max() > 0.01  # the subject changes the image

    kohya = load_file(str(out / "xl_lora.safetensors"))
    assert torch.equal(kohya["bundle_emb.xl.clip_g"], subject.extra_tables["text_encoder_2"])
    assert torch.equal(kohya["bundle_emb.xl.clip_l"], subject.token_embeddings)
    modules = {key.rsplit(".", 2)[0] for key in kohya if not key.startswith("bundle_emb")}
    assert modules and all(m.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_1_",
                                         "lora_unet_output_blocks_")) for m in modules)


def test_kohya_sgm_named_lora_is_reproduced_by_diffusers_kohya_reader(stock, tmp_path):
    plugin = stock()
    subject = make_subject(plugin, "<xl>", scope="kv", seed=2, magnitude=0.3)  # weights only: no diff_b for diffusers
    load_subject(plugin, subject)
    ours = image(plugin)
    from subjectgen_diffusers import export_lora

    result = export_lora(subject, tmp_path / "lora")
    kohya = {k: v for k, v in load_file(str(result.kohya)).items() if not k.startswith("bundle_emb")}
    save_file(kohya, str(tmp_path / "weights_only.safetensors"))  # diffusers takes no bundled embedding
    reader = stock()
    reader.load_lora_weights(str(tmp_path), weight_name="weights_only.safetensors")
    stock_textual_inversion(reader, result.embedding)
    assert np.abs(image(reader) - ours).max() <= 1 / 255


def test_diffusers_and_a1111_exports_hold_one_table_per_encoder(stock, tmp_path):
    pipe = stock()
    subject = make_subject(pipe, "<xl>", scope=None, seed=3)
    written = export_diffusers(subject, tmp_path / "diffusers")
    assert sorted(p.name for p in written) == ["learned_embeds.safetensors",
                                               "learned_embeds_text_encoder_2.safetensors"]
    pipe.load_textual_inversion(str(tmp_path / "diffusers"), weight_name="learned_embeds.safetensors")
    pipe.load_textual_inversion(str(tmp_path / "diffusers"), weight_name="learned_embeds_text_encoder_2.safetensors",
                                text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    for tokenizer, encoder, table in ((pipe.tokenizer, pipe.text_encoder, subject.token_embeddings),
                                      (pipe.tokenizer_2, pipe.text_encoder_2, subject.extra_tables["text_encoder_2"])):
        ids = tokenizer.convert_tokens_to_ids(["<xl>", "<xl>_1"])
        assert torch.equal(encoder.get_input_embeddings().weight[ids], table)
    a1111 = load_file(str(export_a1111(subject, tmp_path / "xl.safetensors")))
    assert torch.equal(a1111["clip_l"], subject.token_embeddings)
    assert torch.equal(a1111["clip_g"], subject.extra_tables["text_encoder_2"])
    with pytest.raises(Exception, match=r"2 tables \(clip_l, clip_g\).*\.safetensors"):
        export_a1111(subject, tmp_path / "xl.pt")
    fresh = stock()  # the clip_l/clip_g file is also a subject load_subject reads (both tables)
    assert load_subject(fresh, tmp_path / "xl.safetensors", token="<xl>") == "<xl>"
    ids = fresh.tokenizer_2.convert_tokens_to_ids(["<xl>", "<xl>_1"])
    assert torch.equal(fresh.text_encoder_2.get_input_embeddings().weight[ids], subject.extra_tables["text_encoder_2"])
