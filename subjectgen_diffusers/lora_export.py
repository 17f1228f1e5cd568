"""Export a subject as a LoRA plus an embedding, for AUTOMATIC1111/Forge, ComfyUI and stock diffusers.

A Custom Diffusion delta (Kumari et al., CVPR 2023) ``ΔW`` of ``to_q/to_k/to_v/to_out.0`` is a LoRA once factored as
``ΔW = up @ down`` (:mod:`subjectgen_diffusers.compress`: exact full-rank SVD by default, or ``rank`` / ``energy``).
Names and keys that differ between model families come from the subject's family
(:mod:`subjectgen_diffusers.families`): the kohya module names (SD 1.x/2.x: the diffusers module path; SDXL: the
ldm/SGM block names SDXL LoRAs use, ``input_blocks.4.1...``) and the embedding keys (one per text encoder: SD 1.x/2.x
``emb_params``; SDXL ``clip_l`` and ``clip_g``). Files written into a new folder (``<name>`` is the token without its
brackets, e.g. ``s1`` for ``<s1>``):

- ``<name>_lora.safetensors`` — kohya naming: ``lora_unet_<module name with _>.lora_down.weight`` ``[r, in]``,
  ``.lora_up.weight`` ``[out, r]`` and ``.alpha`` (``= r``, so the scale ``alpha / r`` is 1); the ``to_out`` bias delta
  as ``lora_unet_<...>_to_out_0.diff_b``; the token vectors bundled as ``bundle_emb.<name>.<embedding key>`` (how the
  A1111/Forge Lora extension carries an embedding inside a LoRA). For A1111/Forge (``models/Lora``) and ComfyUI
  (``models/loras``).
- ``<name>.safetensors`` — the token vectors as an A1111 embedding, ``{"emb_params": T[n, d]}`` (SDXL:
  ``{"clip_l": T[n, 768], "clip_g": T[n, 1280]}``), read by A1111/Forge (``embeddings/``), ComfyUI
  (``models/embeddings``, prompt ``embedding:<name>``) and ``pipe.load_textual_inversion`` (SDXL: once per encoder,
  ``clip_l`` with ``text_encoder``/``tokenizer``, ``clip_g`` with ``text_encoder_2``/``tokenizer_2``).
- ``pytorch_lora_weights.safetensors`` — the same factors in diffusers' peft keys (``unet.<path>.lora_A.weight``,
  ``.lora_B.weight`` and, for the bias delta, ``.lora_B.bias``), for ``pipe.load_lora_weights(folder,
  weight_name=...)``: diffusers 0.42 refuses the kohya file's ``bundle_emb`` keys ("all LoRA param names contain
  'lora'") and, in its SD 1.5 kohya converter, ``diff_b`` keys; its peft path takes the bias.
- ``export.json`` — ranks, per-delta relative Frobenius error ``‖ΔW - up @ down‖_F / ‖ΔW‖_F``, the files, and notes
  on what a reader cannot take.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .atomic_io import atomic_save_safetensors, atomic_write_json
from .compress import RankChoice, check_new_folder, factorize_subject
from .errors import SubjectgenError
from .subject_format import Subject

DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"
EXPORT_REPORT = "export.json"
BUNDLE_PREFIX = "bundle_emb"


def file_stem(token: str) -> str:
    """The token as a file name and A1111 prompt word: ``<s1>`` -> ``s1``, ``‹ünï>`` -> ``ünï`` (letters and digits of
    any script are kept; brackets, punctuation and path characters go)."""
    return re.sub(r"[^\w-]+", "", token) or "subject"


def embedding_tables(subject: Subject, rows: slice, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One token's rows of every token table, under the family's embedding-file keys (``emb_params``; SDXL:
    ``clip_l``, ``clip_g``)."""
    tables = subject.token_tables
    return {slot.embedding_key: tables[slot.encoder][rows].detach().to(dtype).contiguous()
            for slot in subject.config.model_family.text_encoders}


@dataclass
class LoraExport:
    """What :func:`export_lora` wrote (paths are None when not written) and the notes it printed."""

    folder: Path
    embedding: Path
    kohya: Path | None = None
    diffusers: Path | None = None
    report: Path | None = None
    notes: list[str] = field(default_factory=list)
    extra_embeddings: list[Path] = field(default_factory=list)  # the further tokens of a subject holding several

    @property
    def written(self) -> list[Path]:
        return [p for p in (self.kohya, self.diffusers, self.embedding, *self.extra_embeddings, self.report)
                if p is not None]


def _bias_note(subject: Subject, base_unet) -> tuple[str, dict]:
    """How large the to_out bias deltas are, relative to the base biases when the base UNet is given."""
    delta_sq = sum(float(b.double().pow(2).sum()) for b in subject.bias_deltas.values())
    stats: dict = {"layers": len(subject.bias_deltas), "delta_norm": delta_sq**0.5}
    if base_unet is not None:
        base_sq = sum(float(base_unet.get_submodule(layer).to_out[0].bias.detach().double().pow(2).sum())
                      for layer in subject.bias_deltas)
        stats["relative_to_bias"] = (delta_sq / base_sq) ** 0.5 if base_sq > 0 else None
    size = (f"‖Δb‖/‖b‖ = {stats['relative_to_bias']:.2%}" if stats.get("relative_to_bias") is not None
            else f"‖Δb‖ = {stats['delta_norm']:.4g}; pass the base model to compare it with ‖b‖")
    note = (f"A1111's Lora extension reads a bias delta (diff_b) only for full-weight 'diff' modules, not next to "
            f"lora_up/lora_down: there the to_out bias delta of {stats['layers']} layers ({size}) is left out. "
            f"ComfyUI and Forge read diff_b from the kohya file; diffusers reads it from {DIFFUSERS_LORA_FILE}.")
    return note, stats


def export_lora(
    subject: Subject | str | Path,
    out: str | Path,
    *,
    rank: int | None = None,
    energy: float | None = None,
    dtype: torch.dtype | None = None,
    base_unet=None,
) -> LoraExport:
    """Write the LoRA files, the embedding and ``export.json`` for ``subject`` into the new folder ``out``.

    ``rank`` / ``energy`` choose the factor rank (default: exact, each delta's full rank). ``dtype`` (default: the
    subject's stored dtype) is the dtype of every written tensor. ``base_unet`` is only used to state the bias delta
    relative to the base biases in the note for readers that cannot apply it. A subject without weight deltas (``cr``)
    gets just the embedding, with a note saying so.
    """
    choice = RankChoice(rank, energy)
    out = Path(out)
    check_new_folder(out)
    subject = subject if isinstance(subject, Subject) else Subject.load(subject)
    if dtype is None:
        dtype = getattr(torch, subject.config.dtype, torch.float32)
    name = file_stem(subject.config.token)
    family = subject.config.model_family
    unet_config = None if base_unet is None else base_unet.config
    rows = subject.config.token_rows()
    vectors = embedding_tables(subject, rows[subject.config.token], dtype)
    # a subject holding several people (merge, joint training): one embedding file per further token, beside the first
    extra = {token: embedding_tables(subject, rows[token], dtype) for token in subject.config.extra_tokens}
    if not subject.deltas:
        result = LoraExport(out, atomic_save_safetensors(out / f"{name}.safetensors", vectors,
                                                         metadata={"format": "pt"}))
        result.notes.append(
            f"subject `{subject.config.token}` is a `{subject.config.method}` subject: it has only token vectors and "
            f"no weight deltas, so there is no LoRA to write; wrote just the embedding {result.embedding.name}.")
        result.report = atomic_write_json(out / EXPORT_REPORT, _report(subject, name, choice, {}, result, None))
        return result

    orphans = sorted(layer for layer in subject.bias_deltas if "to_out.0" not in subject.deltas.get(layer, {}))
    if orphans:
        raise SubjectgenError(f"{orphans[0]}: a to_out bias delta without a to_out weight delta has no LoRA form.")
    factors = factorize_subject(subject, choice)
    kohya: dict[str, torch.Tensor] = {}
    peft: dict[str, torch.Tensor] = {}
    for (layer, proj), factored in factors.items():
        module = family.kohya_module(layer, proj, unet_config)
        up, down = factored.up.to(dtype), factored.down.to(dtype)
        kohya[f"{module}.lora_down.weight"] = down
        kohya[f"{module}.lora_up.weight"] = up
        kohya[f"{module}.alpha"] = torch.tensor(float(factored.rank), dtype=dtype)
        peft[f"unet.{layer}.{proj}.lora_A.weight"] = down
        peft[f"unet.{layer}.{proj}.lora_B.weight"] = up
    for layer, bias in sorted(subject.bias_deltas.items()):
        kohya[f"{family.kohya_module(layer, 'to_out.0', unet_config)}.diff_b"] = bias.detach().to(dtype)
    if subject.bias_deltas:
        # diffusers turns on peft's lora_bias for every module once one lora_B.bias is present, and leaves a missing one
        # on the meta device (the forward then fails): give each module its bias delta, zero where there is none.
        for (layer, proj), factored in factors.items():
            bias = subject.bias_deltas.get(layer) if proj == "to_out.0" else None
            zero = torch.zeros(factored.up.shape[0], dtype=dtype)
            peft[f"unet.{layer}.{proj}.lora_B.bias"] = zero if bias is None else bias.detach().to(dtype)
    for stem, tables in ((name, vectors), *((file_stem(token), t) for token, t in extra.items())):
        for key, table in tables.items():
            kohya[f"{BUNDLE_PREFIX}.{stem}.{key}"] = table
    metadata = {"format": "pt", "subjectgen_token": subject.config.token, "subjectgen_method": subject.config.method,
                "subjectgen_family": subject.config.family}
    result = LoraExport(
        out,
        embedding=atomic_save_safetensors(out / f"{name}.safetensors", vectors, metadata={"format": "pt"}),
        kohya=atomic_save_safetensors(out / f"{name}_lora.safetensors", kohya, metadata=metadata),
        diffusers=atomic_save_safetensors(out / DIFFUSERS_LORA_FILE, peft, metadata={"format": "pt"}),
    )
    for token, rows_of_token in extra.items():
        result.extra_embeddings.append(atomic_save_safetensors(
            out / f"{file_stem(token)}.safetensors", rows_of_token, metadata={"format": "pt"}))
    bias_stats = None
    if subject.bias_deltas:
        note, bias_stats = _bias_note(subject, base_unet)
        result.notes.append(note)
    result.report = atomic_write_json(out / EXPORT_REPORT, _report(subject, name, choice, factors, result, bias_stats))
    return result


def _report(subject: Subject, name: str, choice: RankChoice, factors: dict, result: LoraExport, bias_stats) -> dict:
    return {
        "token": subject.config.token,
        "prompt_word_a1111_comfyui": name,
        "method": subject.config.method,
        "family": subject.config.family,
        "cd_scope": subject.config.cd_scope,
        "rank": choice.rank,
        "energy": choice.energy,
        "files": {
            "kohya_lora": result.kohya.name if result.kohya else None,
            "diffusers_lora": result.diffusers.name if result.diffusers else None,
            "embedding": result.embedding.name,
            "extra_embeddings": [p.name for p in result.extra_embeddings],
        },
        "max_relative_error": max((f.relative_error for f in factors.values()), default=0.0),
        "layers": {f"{layer}.{proj}": {"rank": f.rank, "relative_error": f.relative_error}
                   for (layer, proj), f in factors.items()},
        "bias_delta": bias_stats,
        "notes": result.notes,
    }
