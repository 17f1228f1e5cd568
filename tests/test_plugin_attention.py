"""The delta attention processor: exact identity at ΔW = 0, equality with patched weights, scales, composition."""

from __future__ import annotations

import torch
from _plugin_fixtures import (
    assert_same_state,
    cross_attention_layers,
    encode,
    make_subject,
    patch_weights,
    pipeline_state,
    unet_out,
    word_vectors,
)
from diffusers.models.attention_processor import AttnProcessor2_0

from subjectgen_diffusers import SubjectAttnProcessor, load_subject, set_subject_scale, unload_subject


def test_identity_subject_reproduces_base_output_bit_for_bit(tiny_pipe):
    base = unet_out(tiny_pipe, "a photo of a person")
    images_before = tiny_pipe("a photo of a person", num_inference_steps=2, height=64, width=64, output_type="pt",
                              generator=torch.Generator().manual_seed(0)).images
    subject = make_subject(tiny_pipe, "<s1>", scope="kv+q+out", vectors=word_vectors(tiny_pipe, ["person"]), zero=True)
    load_subject(tiny_pipe, subject)
    layer = cross_attention_layers(tiny_pipe.unet)[0]
    assert isinstance(tiny_pipe.unet.get_submodule(layer).processor, SubjectAttnProcessor)
    assert torch.equal(unet_out(tiny_pipe, "a photo of a <s1>"), base)
    images_after = tiny_pipe("a photo of a <s1>", num_inference_steps=2, height=64, width=64, output_type="pt",
                             generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(images_after, images_before)


def test_deltas_equal_a_manual_weight_patch_for_every_scope(tiny_pipe):
    for scope in ("kv", "kv+q+out"):
        subject = make_subject(tiny_pipe, "<s1>", scope=scope, seed=3)
        load_subject(tiny_pipe, subject)
        ours = unet_out(tiny_pipe, "a photo of <s1>")
        reference_tokens = encode(tiny_pipe, "a photo of <s1>")
        unload_subject(tiny_pipe)
        # reference: stock processors, weights patched in place, same conditioning
        state = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
        patch_weights(tiny_pipe, subject)
        latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            reference = tiny_pipe.unet(latents, 500, encoder_hidden_states=reference_tokens).sample
        tiny_pipe.unet.load_state_dict(state)
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
        assert (ours - unet_out(tiny_pipe, "a photo of a person")).abs().max() > 1e-3


def test_scale_interpolates_deltas_and_zero_is_the_base_unet(tiny_pipe):
    subject = make_subject(tiny_pipe, "<s1>", scope="kv", seed=1, vectors=word_vectors(tiny_pipe, ["person"]))
    base = unet_out(tiny_pipe, "a person")
    load_subject(tiny_pipe, subject, scale=0.0)
    assert torch.equal(unet_out(tiny_pipe, "a <s1>"), base)
    set_subject_scale(tiny_pipe, "<s1>", 0.5)
    half = unet_out(tiny_pipe, "a <s1>")
    unload_subject(tiny_pipe)
    patch_weights(tiny_pipe, subject, scale=0.5)
    torch.testing.assert_close(half, unet_out(tiny_pipe, "a person"), rtol=1e-5, atol=1e-5)


def test_two_subjects_compose_and_unload_one_at_a_time(tiny_pipe):
    base = unet_out(tiny_pipe, "a person and a dog")
    state = pipeline_state(tiny_pipe)
    first = make_subject(tiny_pipe, "<s1>", scope="kv", seed=1, vectors=word_vectors(tiny_pipe, ["person"]))
    second = make_subject(tiny_pipe, "<s2>", scope="kv+q+out", seed=2, vectors=word_vectors(tiny_pipe, ["dog"]))
    load_subject(tiny_pipe, first, scale=0.7)
    load_subject(tiny_pipe, second, scale=0.4)
    both = unet_out(tiny_pipe, "a <s1> and a <s2>")
    unload_subject(tiny_pipe, "<s1>")
    only_second = unet_out(tiny_pipe, "a person and a <s2>")
    unload_subject(tiny_pipe, "<s2>")
    assert torch.equal(unet_out(tiny_pipe, "a person and a dog"), base)
    assert_same_state(state, pipeline_state(tiny_pipe))

    saved = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    patch_weights(tiny_pipe, first, 0.7)
    patch_weights(tiny_pipe, second, 0.4)
    torch.testing.assert_close(both, unet_out(tiny_pipe, "a person and a dog"), rtol=1e-5, atol=1e-5)
    tiny_pipe.unet.load_state_dict(saved)
    patch_weights(tiny_pipe, second, 0.4)
    torch.testing.assert_close(only_second, unet_out(tiny_pipe, "a person and a dog"), rtol=1e-5, atol=1e-5)


def test_last_subject_leaving_restores_the_stock_processor_objects(tiny_pipe):
    before = dict(tiny_pipe.unet.attn_processors)
    load_subject(tiny_pipe, make_subject(tiny_pipe, "<s1>"))
    after_load = tiny_pipe.unet.attn_processors
    changed = {n for n in before if after_load[n] is not before[n]}
    assert changed == {f"{layer}.processor" for layer in cross_attention_layers(tiny_pipe.unet)}
    assert all(isinstance(after_load[n], AttnProcessor2_0) for n in set(before) - changed)
    unload_subject(tiny_pipe)
    assert all(tiny_pipe.unet.attn_processors[n] is before[n] for n in before)


def test_processor_follows_the_unet_dtype(tiny_pipe):
    subject = make_subject(tiny_pipe, "<s1>", scope="kv+q+out", seed=4)
    load_subject(tiny_pipe, subject)
    reference = unet_out(tiny_pipe, "a <s1>")
    tiny_pipe.unet.to(torch.bfloat16)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.bfloat16)
    with torch.no_grad():
        low = tiny_pipe.unet(latents, 500, encoder_hidden_states=encode(tiny_pipe, "a <s1>").bfloat16()).sample
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), reference, rtol=0.1, atol=0.1)


def test_works_under_accelerate_offloading_hooks(tiny_pipe):
    """enable_sequential_cpu_offload leaves weights on the meta device outside forward (here with a CPU executor)."""
    from accelerate import cpu_offload

    subject = make_subject(tiny_pipe, "<s1>", scope="kv+q+out", seed=3)
    load_subject(tiny_pipe, subject)
    reference = unet_out(tiny_pipe, "a <s1>")
    cpu_offload(tiny_pipe.unet, execution_device=torch.device("cpu"))
    layer = cross_attention_layers(tiny_pipe.unet)[0]
    assert tiny_pipe.unet.get_submodule(layer).to_k.weight.device.type == "meta"
    torch.testing.assert_close(unet_out(tiny_pipe, "a <s1>"), reference, rtol=1e-5, atol=1e-5)
