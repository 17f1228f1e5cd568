"""Merge several subjects into one: Custom Diffusion's constrained weight merge (Kumari et al., CVPR 2023, Sec. 3.2).

Loading two subjects side by side adds their deltas, ``W0 + ΔW_1 + ΔW_2``: each subject's token then meets the
other's change too. The paper instead solves, for every cross-attention projection whose input is text (``to_k``,
``to_v`` of the ``attn2`` layers), a constrained least-squares problem

    minimise ‖C_reg Wᵀ − C_reg W0ᵀ‖_F   subject to   C_i Wᵀ = C_i W_iᵀ  for every subject i,

where ``C_reg`` stacks the text-encoder features of regularisation captions (the projection should stay what the base
model computes on ordinary text) and ``C_i`` the features of subject ``i``'s own captions at and after its token
(the merged projection must compute exactly what subject ``i``'s trained projection ``W_i = W0 + ΔW_i`` computes
there). With ``M = C_regᵀ C_reg`` (plus a tiny ridge for numerical rank) and ``C``/``V`` the stacked constraint
features and targets, the Lagrangian gives the closed form

    Wᵀ = W0ᵀ + M⁻¹ Cᵀ (C M⁻¹ Cᵀ)⁻¹ (V − C W0ᵀ).

Projections whose input is not text (``to_q``, ``to_out.0``, self-attention layers: scope ``kv+q+out``) have no
caption features to constrain; their deltas are added, exactly as loading the subjects together does, and the merged
subject's metadata lists them. The result is one subject holding every token (``extra_tokens``) and one set of
deltas; ``load_subject`` loads it and every exporter writes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .errors import SubjectgenError
from .methods import CD_SCOPES, token_strings
from .subject_format import LowRankDelta, Subject, SubjectConfig

TEXT_PROJECTIONS = ("to_k", "to_v")
DEFAULT_CAPTION = "a photo of {} person"  # a subject whose training record names no prompt
DEFAULT_RIDGE = 1e-6  # of M's mean diagonal: keeps M invertible when the captions span fewer directions than d


class MergeError(SubjectgenError):
    """The subjects cannot be merged; the message says which ones and what to change."""


@dataclasses.dataclass
class MergeSource:
    subject: Subject
    name: str  # how errors and the metadata name it (folder or token)


def read_for_merge(source: Subject | str | Path) -> MergeSource:
    if isinstance(source, Subject):
        return MergeSource(source, source.config.token)
    from .formats import read_subject
    from .subject_check import check_subject_files

    check_subject_files(source)  # a damaged or truncated file is said as such, not as a safetensors error

    return MergeSource(read_subject(Path(source)), Path(source).name)


def with_token(source: MergeSource, token: str) -> MergeSource:
    """``source`` with its person's token renamed (e.g. two subjects both trained as ``<new1>``); the vectors and
    deltas are unchanged. A subject that already holds several people keeps its tokens."""
    config = source.subject.config
    if token == config.token:
        return source
    if config.extra_tokens:
        raise MergeError(f"{source.name} holds several people ({', '.join(t for t, _ in config.tokens)}); its tokens "
                         "cannot be renamed by --tokens: give it its own tokens as they are.")
    renamed = dataclasses.replace(source.subject, config=dataclasses.replace(config, token=token))
    return MergeSource(renamed, source.name)


def _dense(delta) -> torch.Tensor:
    return delta.dense() if isinstance(delta, LowRankDelta) else delta.float()


def check_mergeable(sources: list[MergeSource]) -> None:
    """Refuse what cannot be merged: one subject, different bases or widths, a token twice, nothing to merge."""
    if len(sources) < 2:
        raise MergeError(f"merge needs two or more subjects, got {len(sources)}.")
    bases = {s.subject.config.base_model for s in sources}
    if len(bases) > 1:
        listed = ", ".join(f"{s.name}: {s.subject.config.base_model!r}" for s in sources)
        raise MergeError(f"the subjects were trained on different base models ({listed}); merge only subjects of "
                         "one base model (retrain the others on it).")
    families = {s.subject.config.family for s in sources}
    if len(families) > 1:
        listed = ", ".join(f"{s.name}: {s.subject.config.model_family.title}" for s in sources)
        raise MergeError(f"the subjects are of different model families ({listed}); merge only subjects of one base.")
    family = sources[0].subject.config.model_family
    if len(family.text_encoders) > 1:
        raise MergeError(
            f"merging {family.title} subjects is not supported yet: its cross-attention reads the features of "
            f"{len(family.text_encoders)} text encoders side by side, and the constrained solve here reads one; load "
            "the subjects together with load_subject instead (each keeps its own token and deltas).")
    widths = {s.subject.config.text_hidden_size for s in sources}
    if len(widths) > 1:
        raise MergeError(f"the subjects' token vectors have different widths {sorted(widths)}; they come from "
                         "different model families.")
    seen: dict[str, str] = {}
    for source in sources:
        for token, count in source.subject.config.tokens:
            for name in token_strings(token, count):
                if name in seen:
                    raise MergeError(f"token {name!r} is in both {seen[name]} and {source.name}; a merged subject "
                                     f"needs one token per person: name each person's token with `subjectgen merge --tokens "
                                     f"'<alice>' '<bob>' ...` (one per subject, in order), or retrain one of them "
                                     f"under another token.")
                seen[name] = source.name
    if not any(s.subject.deltas for s in sources):
        raise MergeError("none of the subjects has Custom Diffusion weight deltas (all are token-only, e.g. cr): "
                         "there is nothing to merge; load them together with load_subject instead.")


def _features(pipe, captions: list[str]) -> torch.Tensor:
    """The text encoder's last hidden states ``[n, 77, d]`` (what the UNet's cross-attention reads)."""
    tokenizer = pipe.tokenizer
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids.to(pipe.text_encoder.device))[0].double().cpu(), ids


def constraint_features(pipe, captions: list[str], first_token_id: int) -> torch.Tensor:
    """Rows ``[k, d]``: each caption's features from the subject's first token up to the end-of-text token."""
    states, ids = _features(pipe, captions)
    eos = tokenizer_eos(pipe.tokenizer)
    rows = []
    for caption, state, row_ids in zip(captions, states, ids):
        where = (row_ids == first_token_id).nonzero()
        if where.numel() == 0:
            raise MergeError(f"constraint caption {caption!r} does not contain its subject's token.")
        start = int(where[0])
        end = int((row_ids == eos).nonzero()[0]) if (row_ids == eos).any() else len(row_ids) - 1
        rows.append(state[start : end + 1])
    return _unique_rows(torch.cat(rows))


def tokenizer_eos(tokenizer) -> int:
    return int(tokenizer.eos_token_id)


def _unique_rows(rows: torch.Tensor) -> torch.Tensor:
    """Drop repeated rows (two captions sharing a tail): a repeated equality is one constraint, not two."""
    keep: list[torch.Tensor] = []
    for row in rows:
        if not any(torch.allclose(row, kept, rtol=0, atol=1e-9) for kept in keep):
            keep.append(row)
    return torch.stack(keep)


def solve_constrained(w0: torch.Tensor, reg: torch.Tensor, constraints: torch.Tensor, targets: torch.Tensor,
                      ridge: float = DEFAULT_RIDGE) -> torch.Tensor:
    """The closed form above: ``W`` (``[out, in]``) closest to ``w0`` on ``reg`` with ``constraints Wᵀ = targets``.

    ``reg``: ``[n, in]``; ``constraints``: ``[k, in]``; ``targets``: ``[k, out]``. Computed in float64."""
    w0, reg, c, v = w0.double(), reg.double(), constraints.double(), targets.double()
    if c.shape[0] > c.shape[1]:
        raise MergeError(f"{c.shape[0]} constraint features for a {c.shape[1]}-d projection input: more equalities "
                         "than the weight can meet exactly; merge fewer subjects or use shorter constraint captions.")
    m = reg.T @ reg
    m = m + ridge * (m.diagonal().mean() + 1e-12) * torch.eye(m.shape[0], dtype=m.dtype)
    m_inv_ct = torch.linalg.solve(m, c.T)  # M⁻¹ Cᵀ  [in, k]
    gram = c @ m_inv_ct  # C M⁻¹ Cᵀ  [k, k]
    residual = v - c @ w0.T  # [k, out]
    lagrange = torch.linalg.solve(gram, residual)
    return (w0.T + m_inv_ct @ lagrange).T


@dataclasses.dataclass
class MergePlan:
    """The captions a merge uses; recorded in the merged subject's metadata."""

    regularization_captions: list[str]
    constraint_captions: dict[str, list[str]]  # per first token


def subject_captions(subject: Subject) -> dict[str, list[str]]:
    """Each token's constraint captions: its training prompt (``{}`` = the token's prompt text) when recorded."""
    prompt = subject.config.training.get("prompt") or DEFAULT_CAPTION
    prompts = subject.config.training.get("prompts") or {}
    return {token: [(prompts.get(token) or prompt).replace("{}", " ".join(token_strings(token, count)))]
            for token, count in subject.config.tokens}


def merge_subjects(
    pipe,
    subjects: Sequence[Subject | str | Path],
    *,
    regularization_captions: Sequence[str],
    constraint_captions: Mapping[str, Sequence[str]] | None = None,
    out: str | Path | None = None,
    ridge: float = DEFAULT_RIDGE,
) -> Subject:
    """Merge ``subjects`` (folders or :class:`Subject` objects) into one subject for the base model in ``pipe``.

    ``pipe``: a Stable Diffusion 1.x/2.x pipeline of the subjects' base model (its tokenizer, text encoder and UNet
    weights are read; it is left as it was). ``regularization_captions``: ordinary captions on which the merged
    projections should stay the base's (e.g. the shipped prompt sets filled with each subject's class, plus the class
    prompts). ``constraint_captions``: per token, captions containing it (``{}``-free, token written out); by default
    each subject's recorded training prompt. ``out``: also save the merged subject there. Returns the merged subject.
    """
    from .loader import _base_weight, subject_token_strings
    from .token_table import add_tokens, remove_tokens

    sources = [read_for_merge(s) for s in subjects]
    check_mergeable(sources)
    if not regularization_captions:
        raise MergeError("regularization_captions is empty; pass ordinary captions (the class prompts at least).")
    captions = {}
    for source in sources:
        captions.update(subject_captions(source.subject))
    captions.update({token: list(value) for token, value in (constraint_captions or {}).items()})
    lookup = _base_weight(pipe.unet)

    # the tokens of every subject, on the pipeline for the feature pass only
    added: list[str] = []
    features: dict[str, torch.Tensor] = {}
    try:
        for source in sources:
            names = subject_token_strings(source.subject.config)
            add_tokens(pipe.tokenizer, pipe.text_encoder, names, source.subject.token_embeddings.detach())
            added += names
        reg, _ = _features(pipe, list(regularization_captions))
        reg = reg.reshape(-1, reg.shape[-1])
        for source in sources:
            for token, _count in source.subject.config.tokens:
                token_id = pipe.tokenizer.convert_tokens_to_ids(token)
                features[token] = constraint_features(pipe, captions[token], token_id)
    finally:
        if added:
            remove_tokens(pipe.tokenizer, pipe.text_encoder, added)

    scopes = {s.subject.config.cd_scope for s in sources if s.subject.deltas}
    scope = "kv+q+out" if "kv+q+out" in scopes else "kv"
    layers = sorted({layer for s in sources for layer in s.subject.deltas})
    deltas: dict[str, dict[str, torch.Tensor]] = {}
    bias_deltas: dict[str, torch.Tensor] = {}
    summed: list[str] = []
    errors: dict[str, float] = {}
    for layer in layers:
        deltas[layer] = {}
        for proj in CD_SCOPES[scope]:
            w0 = lookup(layer, proj).detach().double().cpu()
            parts = [_dense(s.subject.deltas[layer][proj]).double() if proj in s.subject.deltas.get(layer, {})
                     else torch.zeros_like(w0) for s in sources]
            if proj in TEXT_PROJECTIONS and layer.endswith("attn2"):
                rows, targets = [], []
                for source, delta in zip(sources, parts):
                    for token, _count in source.subject.config.tokens:
                        rows.append(features[token])
                        targets.append(features[token] @ (w0 + delta).T)
                c, v = torch.cat(rows), torch.cat(targets)
                merged = solve_constrained(w0, reg, c, v, ridge)
                scale = float(v.abs().max()) or 1.0
                errors[f"{layer}.{proj}"] = float((c @ merged.T - v).abs().max()) / scale
                deltas[layer][proj] = (merged - w0).float()
            else:
                deltas[layer][proj] = torch.stack(parts).sum(0).float()
                summed.append(f"{layer}.{proj}")
        biases = [s.subject.bias_deltas[layer].float() for s in sources if layer in s.subject.bias_deltas]
        if biases:
            bias_deltas[layer] = torch.stack(biases).sum(0)
            summed.append(f"{layer}.to_out.0.bias")

    first = sources[0].subject.config
    all_tokens = [pair for s in sources for pair in s.subject.config.tokens]
    methods = {s.subject.config.method for s in sources if s.subject.deltas}
    plan = MergePlan(list(regularization_captions), {t: captions[t] for t, _ in all_tokens})
    config = SubjectConfig(
        method=methods.pop() if len(methods) == 1 else "cd+cr",
        token=all_tokens[0][0], num_vectors=all_tokens[0][1], extra_tokens=dict(all_tokens[1:]),
        text_hidden_size=first.text_hidden_size, base_model=first.base_model,
        cross_attention_dim=pipe.unet.config.cross_attention_dim, layers=layers, cd_scope=scope,
        training={"merge": {
            "method": "custom-diffusion constrained least squares (Kumari et al. 2023, Sec. 3.2)",
            "subjects": [{"source": s.name, "tokens": [t for t, _ in s.subject.config.tokens],
                          "method": s.subject.config.method, "training": s.subject.config.training} for s in sources],
            "regularization_captions": plan.regularization_captions,
            "constraint_captions": plan.constraint_captions,
            "ridge": ridge,
            "max_relative_constraint_error": max(errors.values(), default=0.0),
            "summed_projections": summed,
        }},
    )
    embeddings = torch.cat([s.subject.token_embeddings.detach().float().cpu() for s in sources])
    merged = Subject(config, embeddings, deltas, bias_deltas)
    if out is not None:
        from .compress import check_new_folder

        check_new_folder(Path(out))
        merged.save(out)
    return merged
