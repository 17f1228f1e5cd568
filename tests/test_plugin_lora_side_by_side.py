"""A subject next to a peft/diffusers style LoRA: either load order, set_adapters, unload_lora_weights, exact unload."""

from __future__ import annotations

import pytest
import torch
from _plugin_fixtures import assert_same_state, make_subject, pipeline_state, unet_out

from subjectgen_diffusers import load_subject, set_subject_scale, unload_subject
from subjectgen_diffusers.compress import compress_subject
from subjectgen_diffusers.subject_format import Subject
from subjectgen_training.models.tiny_models import build_tiny_sd_pipeline

LORA_WEIGHT = 0.7
PROMPT = "a <s1> at the sea"


def style_lora(unet, rank: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """A peft-keyed LoRA on every attention projection (self- and cross-attention), as diffusers' trainers save."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in unet.named_modules():
        if name.endswith(("to_q", "to_k", "to_v", "to_out.0")) and isinstance(module, torch.nn.Linear):
            tensors[f"unet.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=generator) * 0.1
            tensors[f"unet.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=generator) * 0.1
    return tensors


def load_style(pipe, lora: dict) -> None:
    pipe.load_lora_weights({k: v.clone() for k, v in lora.items()}, adapter_name="style")
    pipe.set_adapters(["style"], adapter_weights=[LORA_WEIGHT])


def by_hand(subject: Subject, lora: dict, lora_scale: float):
    """W + ΔW_subject + lora_scale·B·A (and b + Δb) written into a fresh pipeline's Linear layers; tokens added."""
    pipe = build_tiny_sd_pipeline(seed=0)
    with torch.no_grad():
        for key, a in lora.items():
            if key.endswith("lora_A.weight"):
                name = key.removeprefix("unet.").removesuffix(".lora_A.weight")
                b = lora[key.replace("lora_A", "lora_B")]
                pipe.unet.get_submodule(name).weight += lora_scale * (b @ a)
        for layer, projs in subject.deltas.items():
            attn = pipe.unet.get_submodule(layer)
            for proj, delta in projs.items():
                (attn.to_out[0] if proj == "to_out.0" else getattr(attn, proj)).weight += delta
        for layer, bias in subject.bias_deltas.items():
            pipe.unet.get_submodule(layer).to_out[0].bias += bias
    pipe.load_textual_inversion(subject.token_embeddings, token=subject.config.token)
    return pipe


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("side")
    base = build_tiny_sd_pipeline(seed=0)
    subject = make_subject(base, "<s1>", scope="kv+q+out", seed=9, magnitude=0.05)
    full = subject.save(root / "full")
    low = compress_subject(full, root / "rank3", rank=3)
    return {"full": (full, subject), "rank3": (low, Subject.load(low)), "lora": style_lora(base.unet)}


@pytest.mark.parametrize("stored", ["full", "rank3"])
@pytest.mark.parametrize("order", ["lora_first", "subject_first"])
def test_subject_and_lora_compose_in_either_order(parts, order, stored):
    folder, dense = parts[stored]
    pipe = build_tiny_sd_pipeline(seed=0)
    untouched = pipeline_state(pipe)
    if order == "lora_first":
        load_style(pipe, parts["lora"])
        before = pipeline_state(pipe)
        load_subject(pipe, folder)
    else:
        load_subject(pipe, folder)
        load_style(pipe, parts["lora"])
    assert type(pipe.unet.get_submodule(dense.config.layers[0]).to_k).__name__ == "Linear"  # peft's lora.Linear
    torch.testing.assert_close(unet_out(pipe, PROMPT), unet_out(by_hand(dense, parts["lora"], LORA_WEIGHT), PROMPT),
                               atol=2e-5, rtol=1e-4)

    pipe.set_adapters(["style"], adapter_weights=[0.0])  # set_adapters keeps working under the subject
    torch.testing.assert_close(unet_out(pipe, PROMPT), unet_out(by_hand(dense, parts["lora"], 0.0), PROMPT),
                               atol=2e-5, rtol=1e-4)
    pipe.set_adapters(["style"], adapter_weights=[LORA_WEIGHT])

    if order == "lora_first":
        unload_subject(pipe)  # back to exactly the pipeline with its LoRA
        assert_same_state(before, pipeline_state(pipe))
        with_lora_only = build_tiny_sd_pipeline(seed=0)
        load_style(with_lora_only, parts["lora"])
        assert torch.equal(unet_out(pipe, "a cat"), unet_out(with_lora_only, "a cat"))
    else:
        pipe.unload_lora_weights()  # the LoRA leaves, the subject stays
        torch.testing.assert_close(unet_out(pipe, PROMPT), unet_out(by_hand(dense, parts["lora"], 0.0), PROMPT),
                                   atol=2e-5, rtol=1e-4)
        unload_subject(pipe)
        assert_same_state(untouched, pipeline_state(pipe))


def test_scale_zero_under_a_lora_is_the_lora_alone(parts):
    pipe, reference = build_tiny_sd_pipeline(seed=0), build_tiny_sd_pipeline(seed=0)
    load_style(pipe, parts["lora"])
    load_style(reference, parts["lora"])
    load_subject(pipe, parts["rank3"][0])
    load_subject(reference, make_subject(reference, "<s1>", scope=None, vectors=parts["rank3"][1].token_embeddings))
    set_subject_scale(pipe, "<s1>", 0.0)
    assert torch.equal(unet_out(pipe, PROMPT), unet_out(reference, PROMPT))
