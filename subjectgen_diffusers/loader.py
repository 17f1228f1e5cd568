"""``load_subject`` / ``unload_subject`` / ``set_subject_scale`` for any Stable Diffusion 1.x/2.x pipeline.

A subject has two parts (Custom Diffusion, Kumari et al. CVPR 2023; Cross Initialization, Pang et al. CVPR 2024):
token vectors, added to the tokenizer and text encoder in milliseconds by :mod:`~subjectgen_diffusers.token_table`
(a token with ``n`` vectors expands in prompts to ``<tok> <tok>_1 ... <tok>_{n-1}``), and optional cross-attention
weight deltas, applied by :class:`~subjectgen_diffusers.attention.SubjectAttnProcessor` as ``W + scale · ΔW``.

Loads are transactional: everything is read and checked against the pipeline (text width, cross-attention width,
layer names, projection shapes, token not yet in the vocabulary) before the pipeline is touched, and if applying
still fails the pipeline is put back as it was. Which subjects are loaded is recorded on the pipeline's UNet (shared
by pipelines made with ``from_pipe``), never in module globals.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from .attention import attach_layer_delta, detach_layer_delta, set_layer_scale
from .errors import SubjectgenError
from .formats import read_subject
from .methods import token_strings
from .subject_format import LowRankDelta, Subject
from .token_table import add_tokens, remove_tokens, token_taken

_REGISTRY_ATTR = "_subjectgen_subjects"


@dataclass
class LoadedSubject:
    """What one ``load_subject`` call changed, so that ``unload_subject`` can undo exactly that."""

    token: str
    added_tokens: list[str]
    layers: list[str]
    scale: float
    method: str
    base_model: str
    tokens: list[str] = dataclasses.field(default_factory=list)  # every prompt token (several for a merged subject)


def loaded_subjects(pipe) -> dict[str, LoadedSubject]:
    """The subjects currently loaded on ``pipe``, by token (a live view: do not modify)."""
    unet = getattr(pipe, "unet", None)
    return getattr(unet, _REGISTRY_ATTR, {}) if unet is not None else {}


def _registry(pipe) -> dict[str, LoadedSubject]:
    unet = pipe.unet
    if not hasattr(unet, _REGISTRY_ATTR):
        object.__setattr__(unet, _REGISTRY_ATTR, {})
    return getattr(unet, _REGISTRY_ATTR)


def _check_pipeline(pipe) -> None:
    missing = [name for name in ("tokenizer", "text_encoder", "unet") if getattr(pipe, name, None) is None]
    if missing:
        raise SubjectgenError(f"load_subject needs a pipeline with a tokenizer, text encoder and UNet; missing {missing}.")
    if getattr(pipe, "text_encoder_2", None) is not None:
        raise SubjectgenError(
            "subjects are trained for single-text-encoder Stable Diffusion (1.x/2.x); this pipeline has two text "
            "encoders (SDXL). Load the subject into the SD model it was trained on."
        )
    if not hasattr(pipe, "load_textual_inversion"):
        raise SubjectgenError(
            f"{type(pipe).__name__} has no textual-inversion support; use a StableDiffusionPipeline or SubjectPipeline."
        )


def _base_weight(unet):
    def lookup(layer: str, name: str) -> torch.Tensor:
        is_bias = name.endswith(".bias")
        proj = name.removesuffix(".bias")
        linear = _linear(_attention_module(unet, layer), proj, layer)
        if not is_bias:
            return linear.weight
        if linear.bias is None:
            raise SubjectgenError(f"`{layer}.{proj}` has no bias in this UNet, but the subject changes it.")
        return linear.bias

    return lookup


def _attention_module(unet, layer: str):
    from diffusers.models.attention_processor import Attention

    try:
        module = unet.get_submodule(layer)
    except AttributeError:
        module = None
    if not isinstance(module, Attention):
        examples = [name.removesuffix(".processor") for name in list(unet.attn_processors)[:2]]
        raise SubjectgenError(
            f"the subject changes attention layer `{layer}`, which this UNet does not have (its layers look like "
            f"{examples}); the subject was trained on another base model: load it into that model."
        )
    return module


def _linear(module, proj: str, layer: str) -> torch.nn.Linear:
    """The projection's ``nn.Linear``: the layer itself, or the base layer a peft LoRA wraps (a loaded style LoRA)."""
    linear = module.to_out[0] if proj == "to_out.0" else getattr(module, proj)
    linear = getattr(linear, "base_layer", linear)
    if not isinstance(linear, torch.nn.Linear):
        raise SubjectgenError(
            f"`{layer}.{proj}` is a {type(linear).__name__}, not a Linear layer (or a LoRA around one); a subject's "
            "weight deltas apply to the linear projections of Stable Diffusion's attention."
        )
    return linear


def _tensors(delta) -> tuple[torch.Tensor, ...]:
    return (delta.up, delta.down) if isinstance(delta, LowRankDelta) else (delta,)


def validate_subject(pipe, subject: Subject) -> None:
    """Raise a :class:`SubjectgenError` naming the mismatch if ``subject`` cannot be loaded into ``pipe``."""
    config = subject.config
    token = config.token
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    if subject.token_embeddings.shape[1] != width:
        raise SubjectgenError(
            f"subject `{token}` has {subject.token_embeddings.shape[1]}-d token vectors but this pipeline's text encoder "
            f"is {width}-d (base {config.base_model!r}); load it into the model family it was trained on."
        )
    if not torch.isfinite(subject.token_embeddings).all():
        raise SubjectgenError(f"subject `{token}` has NaN/inf token vectors; the file is corrupt or training diverged.")
    if token in loaded_subjects(pipe):
        raise SubjectgenError(f"subject `{token}` is already loaded; unload_subject(pipe, {token!r}) first or pass token=.")
    taken = [t for t in subject_token_strings(config) if token_taken(pipe.tokenizer, t)]
    if taken:
        raise SubjectgenError(
            f"token {taken[0]!r} is already in the tokenizer's vocabulary; pick a new word with token='<something>'."
        )
    unet_cross = pipe.unet.config.cross_attention_dim
    if subject.deltas and config.cross_attention_dim is not None and config.cross_attention_dim != unet_cross:
        raise SubjectgenError(
            f"subject `{token}` was trained for cross-attention width {config.cross_attention_dim}, this UNet has "
            f"{unet_cross}; load it into the base model {config.base_model!r}."
        )
    lookup = _base_weight(pipe.unet)
    for layer, projs in subject.deltas.items():
        for proj, delta in projs.items():
            base = lookup(layer, proj)
            if tuple(delta.shape) != tuple(base.shape):
                raise SubjectgenError(
                    f"subject `{token}`: delta for `{layer}.{proj}` has shape {tuple(delta.shape)}, the UNet's weight "
                    f"is {tuple(base.shape)}; the subject was trained on another base model."
                )
            if not all(torch.isfinite(t.sum(dtype=torch.float32)) for t in _tensors(delta)):  # NaN/inf propagate
                raise SubjectgenError(f"subject `{token}`: delta `{layer}.{proj}` holds NaN/inf; the file is corrupt.")
    for layer, bias in subject.bias_deltas.items():
        base = lookup(layer, "to_out.0.bias")
        if tuple(bias.shape) != tuple(base.shape):
            raise SubjectgenError(f"subject `{token}`: bias delta of `{layer}` has shape {tuple(bias.shape)}, expected {tuple(base.shape)}.")


def apply_subject(pipe, subject: Subject, scale: float = 1.0) -> str:
    """Put a validated in-memory ``subject`` on ``pipe``; on any failure undo what was done and re-raise."""
    _check_pipeline(pipe)
    validate_subject(pipe, subject)
    token = subject.config.token
    added = subject_token_strings(subject.config)
    attached: list[str] = []
    tokens_loaded = False
    try:
        add_tokens(pipe.tokenizer, pipe.text_encoder, added, subject.token_embeddings.detach())
        tokens_loaded = True
        layers = sorted(set(subject.deltas) | set(subject.bias_deltas))
        for layer in layers:
            weights = {proj: delta if isinstance(delta, LowRankDelta) else delta.detach()
                       for proj, delta in subject.deltas.get(layer, {}).items()}
            bias = subject.bias_deltas.get(layer)
            attach_layer_delta(pipe.unet, layer, token, weights, None if bias is None else bias.detach(), scale)
            attached.append(layer)
    except Exception as error:
        for layer in attached:
            detach_layer_delta(pipe.unet, layer, token)
        if tokens_loaded or any(token_taken(pipe.tokenizer, t) for t in added):
            _unload_tokens(pipe, added)
        if isinstance(error, SubjectgenError):
            raise
        raise SubjectgenError(f"could not load subject `{token}` ({error}); the pipeline was left unchanged.") from error
    _registry(pipe)[token] = LoadedSubject(
        token, added, attached, float(scale), subject.config.method, subject.config.base_model,
        [name for name, _ in subject.config.tokens],
    )
    return token


def subject_token_strings(config) -> list[str]:
    """Every vocabulary entry a subject adds: each of its tokens in diffusers' multi-vector spelling."""
    return [name for token, count in config.tokens for name in token_strings(token, count)]


def _unload_tokens(pipe, tokens: list[str]) -> None:
    remove_tokens(pipe.tokenizer, pipe.text_encoder, tokens)


def load_subject(
    pipe,
    source,
    *,
    token: str | None = None,
    scale: float = 1.0,
    weight_name: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
) -> str:
    """Load a subject into ``pipe`` and return the token to write in prompts.

    ``source``: a :class:`Subject`, a local folder or file (ours, diffusers Custom Diffusion output, Cross
    Initialization ``learned_embeds.bin``, diffusers textual inversion, A1111 embedding) or a Hub repo id. A subject
    holding several people (``subjectgen merge``, joint training) adds all their tokens and returns the first; the
    others are in ``loaded_subjects(pipe)[token].tokens``.
    ``token`` renames the subject's token (required for files that do not store one). ``scale`` multiplies the weight
    deltas (0 = base UNet); token vectors are not scaled. ``weight_name`` picks one file in a folder or repo.
    """
    _check_pipeline(pipe)
    if isinstance(source, Subject):
        subject = source
        if token and token != source.config.token:
            config = dataclasses.replace(source.config, token=token)
            subject = Subject(config, source.token_embeddings, source.deltas, source.bias_deltas)
    else:
        from .hub import resolve_source
        from .subject_check import check_subject_files

        path = resolve_source(source, weight_name=weight_name, revision=revision, cache_dir=cache_dir,
                              local_files_only=local_files_only)
        check_subject_files(path)  # a damaged or incomplete file: a clear error naming it, before it is read
        subject = read_subject(path, token=token, weight_name=weight_name if path.is_dir() else None,
                               base_weight=_base_weight(pipe.unet), low_rank=True)
    return apply_subject(pipe, subject, scale)


def unload_subject(pipe, token: str | None = None) -> None:
    """Remove one subject (``token``) or all of them; the pipeline then computes exactly what it did before loading."""
    registry = _registry(pipe)
    if token is None:
        tokens = list(registry)
    elif token in registry:
        tokens = [token]
    else:
        raise SubjectgenError(f"no subject `{token}` is loaded; loaded: {sorted(registry) or 'none'}.")
    for name in tokens:
        entry = registry.pop(name)
        for layer in entry.layers:
            detach_layer_delta(pipe.unet, layer, name)
        _unload_tokens(pipe, entry.added_tokens)


def set_subject_scale(pipe, token: str, scale: float) -> None:
    """Change the strength of a loaded subject's weight deltas (0 = base UNet, 1 = as trained)."""
    registry = _registry(pipe)
    if token not in registry:
        raise SubjectgenError(f"no subject `{token}` is loaded; loaded: {sorted(registry) or 'none'}.")
    entry = registry[token]
    for layer in entry.layers:
        set_layer_scale(pipe.unet, layer, token, scale)
    entry.scale = float(scale)
