"""Readers that turn subject files made by other tools into a :class:`~subjectgen_diffusers.subject_format.Subject`.

Recognised sources (detected from the files, never from a user flag):

- our folder: ``subject_config.json`` + ``subject.safetensors``;
- the output folder of diffusers' ``examples/custom_diffusion/train_custom_diffusion.py`` (Kumari et al., CVPR 2023):
  ``pytorch_custom_diffusion_weights.safetensors`` / ``.bin`` holding the *trained* projection weights under keys
  ``{layer}.processor.to_k_custom_diffusion.weight`` (and ``to_v``, optionally ``to_q`` / ``to_out``), plus one
  ``<token>.safetensors`` / ``.bin`` holding ``{"<token>": vector}``. Trained weights are converted to deltas
  ``ΔW = W_trained - W_base`` against the base weights of the pipeline being loaded into;
- a Cross Initialization (Pang et al., "Cross Initialization for Face Personalization of Text-to-Image Models",
  CVPR 2024) ``learned_embeds.bin``: ``{"<tok>_v0": t, "<tok>_v1": t, ...}``;
- a diffusers textual-inversion file (one key: ``{"<tok>": T[d] or T[n, d]}``);
- an AUTOMATIC1111 embedding: ``{"string_to_param": {"*": T[n, d]}, ...}`` (``.pt``) or ``{"emb_params": T[n, d]}``
  (``.safetensors``).

Legacy pickles (``.bin`` / ``.pt``) are only ever read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

import torch

from .methods import CD_PROCESSOR_WEIGHTS, CD_SCOPES, CROSS_INITIALIZATION, CUSTOM_DIFFUSION
from .subject_format import CONFIG_NAME, WEIGHTS_NAME, Subject, SubjectConfig, SubjectFormatError

CD_WEIGHT_NAMES = ("pytorch_custom_diffusion_weights.safetensors", "pytorch_custom_diffusion_weights.bin")
TI_NAMES = ("learned_embeds.safetensors", "learned_embeds.bin")
TENSOR_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_CD_KEY = re.compile(r"^(?P<layer>.+)\.processor\.(?P<proj>" + "|".join(re.escape(n) for n in CD_PROCESSOR_WEIGHTS.values())
                     + r")\.(?P<kind>weight|bias)$")
_CD_PROJ = {name: proj for proj, name in CD_PROCESSOR_WEIGHTS.items()}
_CR_KEY = re.compile(r"^(?P<token>.+)_v(?P<index>\d+)$")

BaseWeight = Callable[[str, str], "torch.Tensor"]
"""``base_weight(layer, name)`` returns the pipeline's current tensor, name in to_q/to_k/to_v/to_out.0/to_out.0.bias."""


def load_tensor_file(path: str | Path) -> dict:
    """Read a safetensors file, or a legacy pickle restricted to tensors and plain containers (``weights_only``)."""
    path = Path(path)
    if not path.is_file():
        raise SubjectFormatError(f"{path} does not exist; pass an existing file or folder.")
    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own error types
            raise SubjectFormatError(f"{path} is not a readable safetensors file ({error}).") from error
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError, zip errors, truncated files ...
        raise SubjectFormatError(
            f"{path} could not be read as a tensor file: only safetensors, or pickles holding nothing but tensors "
            f"(read with torch.load(weights_only=True)), are accepted. Re-save it with safetensors. ({error})"
        ) from error
    if not isinstance(data, dict):
        raise SubjectFormatError(f"{path} holds a {type(data).__name__}, not a dict of tensors.")
    return data


def _is_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte little-endian header length then a JSON object (some tools name them .bin)."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9:
        return False
    size = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < size < path.stat().st_size


def read_subject(
    source: str | Path,
    *,
    token: str | None = None,
    weight_name: str | None = None,
    base_weight: BaseWeight | None = None,
    low_rank: bool = False,
) -> Subject:
    """Read any recognised subject source from a local folder or file; ``token`` renames (or names) its token.

    ``low_rank``: a subject folder with factored deltas keeps them as ``LowRankDelta`` (see ``Subject.load``)."""
    path = Path(source)
    if path.is_dir():
        if weight_name is not None:
            return _read_file(path / weight_name, token, base_weight)
        if (path / CONFIG_NAME).is_file():
            return _rename(Subject.load(path, low_rank=low_rank), token)
        for name in CD_WEIGHT_NAMES:
            if (path / name).is_file():
                return _read_custom_diffusion(path, path / name, token, base_weight)
        for name in TI_NAMES:
            if (path / name).is_file():
                return _read_file(path / name, token, base_weight)
        found = sorted(p.name for p in path.iterdir())[:10]
        raise SubjectFormatError(
            f"{path} holds no subject: expected {CONFIG_NAME} + {WEIGHTS_NAME}, {CD_WEIGHT_NAMES[0]} (or .bin) with a "
            f"token file, or {TI_NAMES[0]} (or .bin); found {found}. Pass weight_name= to pick a file."
        )
    return _read_file(path, token, base_weight)


def _read_file(path: Path, token: str | None, base_weight: BaseWeight | None) -> Subject:
    if path.name == WEIGHTS_NAME and (path.parent / CONFIG_NAME).is_file():
        return _rename(Subject.load(path.parent), token)
    if path.name in CD_WEIGHT_NAMES:
        return _read_custom_diffusion(path.parent, path, token, base_weight)
    if path.suffix not in TENSOR_SUFFIXES and path.is_file():
        raise SubjectFormatError(f"{path}: unknown format; expected one of {TENSOR_SUFFIXES} or a subject folder.")
    data = load_tensor_file(path)
    if any(_CD_KEY.match(str(k)) for k in data):
        return _read_custom_diffusion(path.parent, path, token, base_weight, data)
    tables = _family_tables(path, data, token)
    if tables is not None:
        return tables
    name, vectors, source_format = _token_vectors(path, data, token)
    return _token_subject(name, vectors, source_format)


def _family_tables(path: Path, data: dict, token: str | None) -> Subject | None:
    """An embedding holding one table per text encoder of a family (SDXL's ``clip_l`` + ``clip_g``), as a token-only
    subject of that family; None when the keys are no family's."""
    from .families import families

    for family in families():
        keys = [slot.embedding_key for slot in family.text_encoders]
        if len(keys) < 2 or set(data) != set(keys):
            continue
        tables = [_matrix(path, data[key]) for key in keys]
        if len({t.shape[0] for t in tables}) != 1:
            raise SubjectFormatError(f"{path}: the tables {keys} hold different numbers of vectors "
                                     f"{[t.shape[0] for t in tables]}; they must be one token's rows.")
        config = SubjectConfig(
            method=CROSS_INITIALIZATION.name, token=_need_token(path, token, None), num_vectors=tables[0].shape[0],
            text_hidden_size=tables[0].shape[1], training={"source_format": "a1111"}, family=family.name,
            extra_encoders={slot.encoder: t.shape[1] for slot, t in zip(family.text_encoders[1:], tables[1:])},
        )
        return Subject(config, tables[0], extra_tables={slot.encoder: t for slot, t in
                                                         zip(family.text_encoders[1:], tables[1:])})
    return None


def _token_vectors(path: Path, data: dict, token: str | None) -> tuple[str, torch.Tensor, str]:
    """Classify a token-embedding dict; return (token, [n, d] vectors, format name)."""
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise SubjectFormatError(f"{path}: A1111 `string_to_param` must hold exactly one tensor.")
        return _need_token(path, token, data.get("name")), _matrix(path, next(iter(params.values()))), "a1111"
    keys = list(data)
    if not keys or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise SubjectFormatError(f"{path}: unknown format; expected a dict of tensors, got keys {keys[:5]}.")
    if keys == ["emb_params"]:
        return _need_token(path, token, None), _matrix(path, data["emb_params"]), "a1111"
    if len(keys) == 1:
        return token or keys[0], _matrix(path, data[keys[0]]), "textual-inversion"
    matches = [_CR_KEY.match(k) for k in keys]
    stems = {m.group("token") for m in matches if m}
    if all(matches) and len(stems) == 1:
        ordered = sorted(zip(keys, matches), key=lambda pair: int(pair[1].group("index")))
        indices = [int(m.group("index")) for _, m in ordered]
        if indices != list(range(len(keys))):
            raise SubjectFormatError(f"{path}: Cross Initialization vectors must be numbered _v0.._v{len(keys) - 1}, got {indices}.")
        vectors = torch.cat([_matrix(path, data[k]) for k, _ in ordered])
        return token or stems.pop(), vectors, "cross-initialization"
    raise SubjectFormatError(
        f"{path}: unknown embedding layout with keys {keys[:5]}; expected one key (textual inversion), "
        "`<tok>_v0`, `<tok>_v1`... (Cross Initialization), `string_to_param` or `emb_params` (A1111)."
    )


def _need_token(path: Path, token: str | None, stored: object) -> str:
    if token:
        return token
    if isinstance(stored, str) and stored and not any(c.isspace() for c in stored):
        return stored
    raise SubjectFormatError(f"{path} does not name its token; pass token='<name>' to choose the prompt word.")


def _matrix(path: Path, tensor: object) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or tensor.ndim not in (1, 2) or tensor.numel() == 0:
        raise SubjectFormatError(f"{path}: token vectors must be a tensor of shape [d] or [n, d].")
    return tensor.detach().reshape(-1, tensor.shape[-1]).float()


def _token_subject(token: str, vectors: torch.Tensor, source_format: str) -> Subject:
    config = SubjectConfig(
        method=CROSS_INITIALIZATION.name,
        token=token,
        num_vectors=vectors.shape[0],
        text_hidden_size=vectors.shape[1],
        training={"source_format": source_format},
    )
    return Subject(config, vectors)


def _rename(subject: Subject, token: str | None) -> Subject:
    if not token or token == subject.config.token:
        return subject
    return dataclasses.replace(subject, config=dataclasses.replace(subject.config, token=token))


def _read_custom_diffusion(
    folder: Path, weights_path: Path, token: str | None, base_weight: BaseWeight | None, data: dict | None = None
) -> Subject:
    """diffusers Custom Diffusion output: trained weights + one token file -> a delta subject."""
    if base_weight is None:
        raise SubjectFormatError("reading diffusers Custom Diffusion weights needs the base pipeline (use load_subject).")
    data = load_tensor_file(weights_path) if data is None else data
    trained: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in data.items():
        match = _CD_KEY.match(str(key))
        if match is None:
            if isinstance(tensor, dict) and not tensor:
                continue  # the .bin keeps an empty entry per untrained (self-attention) processor
            raise SubjectFormatError(f"{weights_path}: unexpected key `{key}` in a Custom Diffusion weights file.")
        proj = _CD_PROJ[match.group("proj")] + (".bias" if match.group("kind") == "bias" else "")
        trained.setdefault(match.group("layer"), {})[proj] = tensor
    if not trained:
        raise SubjectFormatError(f"{weights_path} holds no Custom Diffusion attention weights.")
    name, vectors = _custom_diffusion_token(folder, weights_path, token)
    deltas: dict[str, dict[str, torch.Tensor]] = {}
    bias_deltas: dict[str, torch.Tensor] = {}
    for layer, tensors in sorted(trained.items()):
        for proj, weight in tensors.items():
            base = base_weight(layer, proj)
            if tuple(base.shape) != tuple(weight.shape):
                raise SubjectFormatError(
                    f"{weights_path}: `{layer}.{proj}` has shape {tuple(weight.shape)} but the pipeline's is "
                    f"{tuple(base.shape)}; these weights were trained on another base model."
                )
            delta = weight.float() - base.detach().float().cpu()
            if proj == "to_out.0.bias":
                bias_deltas[layer] = delta
            else:
                deltas.setdefault(layer, {})[proj] = delta
    projs = {p for layer in deltas.values() for p in layer}
    cross_dim = next(iter(deltas.values()))["to_k"].shape[1] if "to_k" in projs else None
    config = SubjectConfig(
        method=CUSTOM_DIFFUSION.name,
        token=name,
        num_vectors=vectors.shape[0],
        text_hidden_size=vectors.shape[1],
        cross_attention_dim=cross_dim,
        layers=sorted(deltas),
        cd_scope=min((s for s, p in CD_SCOPES.items() if projs <= set(p)), key=lambda s: len(CD_SCOPES[s])),
        training={"source_format": "diffusers-custom-diffusion"},
    )
    return Subject(config, vectors, deltas, bias_deltas)


def _custom_diffusion_token(folder: Path, weights_path: Path, token: str | None) -> tuple[str, torch.Tensor]:
    candidates = [
        p for p in sorted(folder.iterdir())
        if p.suffix in (".safetensors", ".bin") and p != weights_path and p.name not in CD_WEIGHT_NAMES
        and not p.name.startswith(("optimizer", "scheduler", "random_states", "model"))
    ]
    tokens: dict[str, torch.Tensor] = {}
    for path in candidates:
        data = load_tensor_file(path)
        if len(data) == 1 and isinstance(next(iter(data.values())), torch.Tensor):
            key = next(iter(data))
            tokens[key] = _matrix(path, data[key])
    if not tokens:
        raise SubjectFormatError(
            f"{folder} has Custom Diffusion weights but no modifier-token file (`<new1>.safetensors` or `.bin`); "
            "train with --modifier_token or copy the token file next to the weights."
        )
    if len(tokens) > 1:
        if token in tokens:
            return token, tokens[token]
        raise SubjectFormatError(f"{folder} holds several modifier tokens {sorted(tokens)}; pass token= to pick one.")
    stored, vectors = next(iter(tokens.items()))
    return token or stored, vectors

