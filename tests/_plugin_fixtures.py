"""Helpers shared by the plug-in tests: build subjects and third-party files the way their tools do, run the UNet."""

from __future__ import annotations

from pathlib import Path

import torch

from subjectgen_diffusers.subject_format import Subject, SubjectConfig


def cross_attention_layers(unet) -> list[str]:
    return sorted(name.removesuffix(".processor") for name in unet.attn_processors if name.endswith("attn2.processor"))


def word_vectors(pipe, words: list[str]) -> torch.Tensor:
    """The input-embedding rows of single-token words (so a subject token can stand for known words)."""
    ids = [pipe.tokenizer(word, add_special_tokens=False).input_ids for word in words]
    assert all(len(i) == 1 for i in ids), ids
    return pipe.text_encoder.get_input_embeddings().weight[[i[0] for i in ids]].detach().clone()


def make_subject(
    pipe,
    token: str = "<s1>",
    *,
    scope: str | None = "kv",
    seed: int = 0,
    magnitude: float = 0.05,
    vectors: torch.Tensor | None = None,
    zero: bool = False,
) -> Subject:
    """A random Custom Diffusion (+token) subject shaped for ``pipe`` (of its model family: one token table per text
    encoder, all random but the first when ``vectors`` is given); ``scope=None`` gives a token-only subject."""
    from subjectgen_diffusers.families import family_of_pipeline

    generator = torch.Generator().manual_seed(seed)
    family = family_of_pipeline(pipe)
    widths = family.text_widths(pipe)
    width = widths[family.text_encoders[0].encoder]
    if vectors is None:
        vectors = torch.randn(2, width, generator=generator) * 0.02
    extra_tables = {encoder: torch.randn(vectors.shape[0], w, generator=generator) * 0.02
                    for encoder, w in list(widths.items())[1:]}
    layers = cross_attention_layers(pipe.unet) if scope else []
    projs = {"kv": ("to_k", "to_v"), "kv+q+out": ("to_q", "to_k", "to_v", "to_out.0")}.get(scope, ())
    deltas, bias_deltas = {}, {}
    for layer in layers:
        attn = pipe.unet.get_submodule(layer)
        deltas[layer] = {}
        for proj in projs:
            weight = attn.to_out[0].weight if proj == "to_out.0" else getattr(attn, proj).weight
            delta = torch.randn(weight.shape, generator=generator) * magnitude
            deltas[layer][proj] = torch.zeros_like(delta) if zero else delta
        if scope == "kv+q+out":
            bias = torch.randn(attn.to_out[0].bias.shape, generator=generator) * magnitude
            bias_deltas[layer] = torch.zeros_like(bias) if zero else bias
    config = SubjectConfig(
        method="cd+cr" if scope else "cr",
        token=token,
        num_vectors=vectors.shape[0],
        text_hidden_size=width,
        base_model="tiny-sd" if family.name == "sd1" else f"tiny-{family.name}",
        cross_attention_dim=pipe.unet.config.cross_attention_dim if scope else None,
        layers=layers,
        cd_scope=scope,
        training={"steps": 10, "lr": 1e-5},
        family=family.name,
        extra_encoders={encoder: table.shape[1] for encoder, table in extra_tables.items()},
    )
    return Subject(config, vectors, deltas, bias_deltas, extra_tables)


def encode(pipe, prompt: str) -> torch.Tensor:
    with torch.no_grad():
        return pipe.encode_prompt(prompt, "cpu", 1, False)[0]


def unet_out(pipe, prompt: str, seed: int = 0) -> torch.Tensor:
    """One UNet forward on fixed noise at t=500 conditioned on ``prompt`` (what sampling repeats every step)."""
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return pipe.unet(latents, 500, encoder_hidden_states=encode(pipe, prompt)).sample


def patch_weights(pipe, subject: Subject, scale: float = 1.0) -> None:
    """The reference: write ``W + scale·ΔW`` into the UNet's own Linear layers."""
    with torch.no_grad():
        for layer, projs in subject.deltas.items():
            attn = pipe.unet.get_submodule(layer)
            for proj, delta in projs.items():
                linear = attn.to_out[0] if proj == "to_out.0" else getattr(attn, proj)
                linear.weight += scale * delta
        for layer, bias in subject.bias_deltas.items():
            pipe.unet.get_submodule(layer).to_out[0].bias += scale * bias


def pipeline_state(pipe) -> dict:
    """Everything a subject load may touch, copied, to compare before/after (both encoders of an SDXL pipeline)."""
    second = {}
    if getattr(pipe, "text_encoder_2", None) is not None:
        second = {"vocab_2": dict(pipe.tokenizer_2.get_vocab()), "tokenizer_2_len": len(pipe.tokenizer_2),
                  "text_encoder_2": {k: v.clone() for k, v in pipe.text_encoder_2.state_dict().items()}}
    return {**second,
        "tokenizer_len": len(pipe.tokenizer),
        "text_encoder": {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()},
        "vocab": dict(pipe.tokenizer.get_vocab()),
        "embeddings": pipe.text_encoder.get_input_embeddings().weight.detach().clone(),
        "vocab_size": pipe.text_encoder.config.vocab_size,
        "processors": {name: id(proc) for name, proc in pipe.unet.attn_processors.items()},
        "unet": {k: v.clone() for k, v in pipe.unet.state_dict().items()},
        "prompt": pipe.maybe_convert_prompt("a <s1> and <cd> photo", pipe.tokenizer),
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for name in ("text_encoder", "text_encoder_2"):
        if name in before:
            assert before[name].keys() == after[name].keys()
            assert all(torch.equal(before[name][k], after[name][k]) for k in before[name]), name
    for name in ("vocab_2", "tokenizer_len", "tokenizer_2_len"):
        assert before.get(name) == after.get(name), name
    assert before["vocab"] == after["vocab"]
    assert before["vocab_size"] == after["vocab_size"]
    assert torch.equal(before["embeddings"], after["embeddings"])
    assert before["processors"] == after["processors"]
    assert before["unet"].keys() == after["unet"].keys()
    assert all(torch.equal(before["unet"][k], after["unet"][k]) for k in before["unet"])
    assert before["prompt"] == after["prompt"]


def save_diffusers_custom_diffusion(pipe, folder: Path, trained: Subject, *, safe: bool = True, token_as_bin=False) -> Path:
    """Write what diffusers' examples/custom_diffusion/train_custom_diffusion.py writes after training.

    As that script does: a CustomDiffusionAttnProcessor2_0 on every attention layer (self-attention ones untrained and
    empty), initialised from the UNet's weights; here the trained weights are ``W + ΔW`` from ``trained``; then
    ``unet.save_attn_procs`` and one ``{token: vector}`` file per modifier token.
    """
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0

    unet = pipe.unet
    original = dict(unet.attn_processors)
    train_q_out = trained.config.cd_scope == "kv+q+out"
    processors = {}
    for name in unet.attn_processors:
        layer = name.removesuffix(".processor")
        attn = unet.get_submodule(layer)
        hidden = attn.to_q.weight.shape[1]
        if name.endswith("attn1.processor"):
            processors[name] = CustomDiffusionAttnProcessor2_0(train_kv=False, train_q_out=False, hidden_size=hidden)
            continue
        proc = CustomDiffusionAttnProcessor2_0(
            train_kv=True, train_q_out=train_q_out, hidden_size=hidden, cross_attention_dim=attn.to_k.weight.shape[1]
        )
        weights = {
            "to_k_custom_diffusion.weight": attn.to_k.weight + trained.deltas[layer]["to_k"],
            "to_v_custom_diffusion.weight": attn.to_v.weight + trained.deltas[layer]["to_v"],
        }
        if train_q_out:
            weights["to_q_custom_diffusion.weight"] = attn.to_q.weight + trained.deltas[layer]["to_q"]
            weights["to_out_custom_diffusion.0.weight"] = attn.to_out[0].weight + trained.deltas[layer]["to_out.0"]
            weights["to_out_custom_diffusion.0.bias"] = attn.to_out[0].bias + trained.bias_deltas[layer]
        proc.load_state_dict({k: v.detach() for k, v in weights.items()})
        processors[name] = proc
    unet.set_attn_processor(processors)
    unet.save_attn_procs(str(folder), safe_serialization=safe)
    unet.set_attn_processor(original)
    token = trained.config.token
    vector = trained.token_embeddings[0].detach().clone()
    if safe and not token_as_bin:
        from safetensors.torch import save_file

        save_file({token: vector}, str(folder / f"{token}.safetensors"), metadata={"format": "pt"})
    elif safe:  # some versions of the script write safetensors bytes under a .bin name
        from safetensors.torch import save_file

        save_file({token: vector}, str(folder / f"{token}.bin"), metadata={"format": "pt"})
    else:
        torch.save({token: vector}, folder / f"{token}.bin")
    return folder


def autospec_api():
    """An autospec of the real ``HfApi``: a call with a parameter the real method lacks raises TypeError."""
    from unittest import mock

    from huggingface_hub import HfApi

    api = mock.create_autospec(HfApi, instance=True)
    api.files_at_upload = []
    api.upload_folder.side_effect = lambda **kwargs: api.files_at_upload.extend(
        sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())) or "commit-info"
    return api
