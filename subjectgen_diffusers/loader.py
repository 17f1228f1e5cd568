"""``load_subject`` / ``unload_subject`` / ``set_subject_scale`` for a pipeline of any registered model family.

A subject is made of parts (:mod:`~subjectgen_diffusers.subject_parts`; Custom Diffusion, Kumari et al. CVPR 2023;
Cross Initialization, Pang et al. CVPR 2024): token vectors for each text encoder of its family, added to that
encoder's tokenizer and rows in milliseconds by :mod:`~subjectgen_diffusers.token_table` (a token with ``n`` vectors
expands in prompts to ``<tok> <tok>_1 ... <tok>_{n-1}``, the same words in every tokenizer), and optional
cross-attention weight deltas, applied by :class:`~subjectgen_diffusers.attention.SubjectAttnProcessor` as
``W + scale · ΔW``. Which family a pipeline and a subject are is asked of :mod:`~subjectgen_diffusers.families`.

Loads are transactional: the families must agree, then every part is checked against the pipeline (text widths,
cross-attention width, layer names, projection shapes, tokens not yet in any vocabulary) before the pipeline is
touched, and if applying still fails the parts applied so far are removed. Which subjects are loaded is recorded on
the pipeline's UNet (shared by pipelines made with ``from_pipe``), never in module globals.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .errors import SubjectgenError
from .families import family_of_pipeline, get_family
from .formats import read_subject
from .subject_format import Subject
from .subject_parts import AttentionDeltas
from .subject_parts import base_weight_lookup as _base_weight
from .subject_parts import subject_token_strings

__all__ = ["load_subject", "unload_subject", "set_subject_scale", "loaded_subjects", "subject_token_strings"]

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
    family: str | None = None  # the subject's model family
    config: object = None  # the SubjectConfig the parts were applied with
    parts: list = dataclasses.field(default_factory=list, repr=False)  # (part, progress) pairs, in apply order


def loaded_subjects(pipe) -> dict[str, LoadedSubject]:
    """The subjects currently loaded on ``pipe``, by token (a live view: do not modify)."""
    unet = getattr(pipe, "unet", None)
    return getattr(unet, _REGISTRY_ATTR, {}) if unet is not None else {}


def _registry(pipe) -> dict[str, LoadedSubject]:
    unet = pipe.unet
    if not hasattr(unet, _REGISTRY_ATTR):
        object.__setattr__(unet, _REGISTRY_ATTR, {})
    return getattr(unet, _REGISTRY_ATTR)


def _check_pipeline(pipe):
    """The pipeline's family (an error if it is none of the registered ones or cannot take token vectors)."""
    if getattr(pipe, "unet", None) is None:
        raise SubjectgenError("load_subject needs a pipeline with a UNet, tokenizers and text encoders.")
    family = family_of_pipeline(pipe)
    missing = [name for slot in family.text_encoders for name in (slot.encoder, slot.tokenizer)
               if getattr(pipe, name, None) is None]
    if missing:
        raise SubjectgenError(f"load_subject needs the {family.title} pipeline's text encoders and tokenizers; "
                              f"missing {missing}.")
    if not hasattr(pipe, "load_textual_inversion"):
        raise SubjectgenError(
            f"{type(pipe).__name__} has no textual-inversion support; use {family.pipeline_class_name} or SubjectPipeline.")
    return family


def check_family(pipe, config) -> None:
    """Refuse a subject of another model family than ``pipe``'s, naming both, before anything is read or changed."""
    family = _check_pipeline(pipe)
    if config.family != family.name:
        theirs = get_family(config.family)
        raise SubjectgenError(
            f"subject `{config.token}` was trained for {theirs.title} (family `{theirs.name}`, base "
            f"{config.base_model!r}) and this pipeline is {family.title} (family `{family.name}`); load it into a "
            f"{theirs.title} pipeline such as {theirs.pipeline_class_name}. Nothing was changed.")


def validate_subject(pipe, subject: Subject) -> None:
    """Raise a :class:`SubjectgenError` naming the mismatch if ``subject`` cannot be loaded into ``pipe``."""
    config = subject.config
    check_family(pipe, config)
    if config.token in loaded_subjects(pipe):
        raise SubjectgenError(
            f"subject `{config.token}` is already loaded; unload_subject(pipe, {config.token!r}) first or pass token=.")
    for part in subject.parts():
        part.check(pipe, config)


def apply_subject(pipe, subject: Subject, scale: float = 1.0) -> str:
    """Put a validated in-memory ``subject`` on ``pipe``; on any failure undo what was done and re-raise."""
    validate_subject(pipe, subject)
    config = subject.config
    applied: list[tuple[object, list]] = []
    try:
        for part in subject.parts():
            applied.append((part, []))
            part.apply(pipe, config, scale, applied[-1][1])
    except Exception as error:
        for part, done in reversed(applied):
            part.remove(pipe, config, done)
        if isinstance(error, SubjectgenError):
            raise
        raise SubjectgenError(
            f"could not load subject `{config.token}` ({error}); the pipeline was left unchanged.") from error
    layers = [layer for part, done in applied if isinstance(part, AttentionDeltas) for layer in done]
    _registry(pipe)[config.token] = LoadedSubject(
        config.token, subject_token_strings(config), layers, float(scale), config.method, config.base_model,
        [name for name, _ in config.tokens], config.family, config, applied,
    )
    return config.token


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
            subject = dataclasses.replace(source, config=dataclasses.replace(source.config, token=token))
    else:
        from .hub import resolve_source
        from .subject_check import check_subject_files

        path = resolve_source(source, weight_name=weight_name, revision=revision, cache_dir=cache_dir,
                              local_files_only=local_files_only)
        found = check_subject_files(path)  # a damaged or incomplete file: a clear error naming it, before it is read
        if found is not None:
            check_family(pipe, found[0])
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
        for part, done in reversed(entry.parts):
            part.remove(pipe, entry.config, done)


def set_subject_scale(pipe, token: str, scale: float) -> None:
    """Change the strength of a loaded subject's weight deltas (0 = base UNet, 1 = as trained)."""
    registry = _registry(pipe)
    if token not in registry:
        raise SubjectgenError(f"no subject `{token}` is loaded; loaded: {sorted(registry) or 'none'}.")
    entry = registry[token]
    for part, done in entry.parts:
        part.set_scale(pipe, entry.config, done, scale)
    entry.scale = float(scale)
