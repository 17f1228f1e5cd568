"""Export a subject to files other tools load.

- diffusers: ``learned_embeds.safetensors`` (``{token: T[n, d]}``, read by ``pipe.load_textual_inversion``) and, for
  Custom Diffusion subjects (Kumari et al., CVPR 2023), ``pytorch_custom_diffusion_weights.safetensors`` with the
  *full* trained projections ``W_base + ΔW`` under diffusers' ``{layer}.processor.to_k_custom_diffusion.weight`` keys,
  the layout ``examples/custom_diffusion/train_custom_diffusion.py`` writes (needs the base UNet's weights).
  A family with several text encoders (SDXL) gets one textual-inversion file per further encoder,
  ``learned_embeds_<encoder>.safetensors`` (``learned_embeds_text_encoder_2.safetensors``), for
  ``pipe.load_textual_inversion(folder, weight_name=..., text_encoder=pipe.<encoder>, tokenizer=pipe.<its tokenizer>)``.
- AUTOMATIC1111: an embedding file, ``{"emb_params": T[n, d]}`` (``.safetensors``) or
  ``{"string_to_param": {"*": T[n, d]}, ...}`` (``.pt``); SDXL: ``{"clip_l": T[n, 768], "clip_g": T[n, 1280]}``
  (``.safetensors`` only, the keys come from the family). An A1111 embedding carries only the token, so exporting a
  subject with weight deltas there needs ``token_only=True``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .atomic_io import atomic_save_safetensors, atomic_write
from .errors import SubjectgenError
from .methods import CD_PROCESSOR_WEIGHTS
from .lora_export import embedding_tables, file_stem
from .subject_format import Subject

TI_FILE = "learned_embeds.safetensors"
CD_FILE = "pytorch_custom_diffusion_weights.safetensors"


def _as_subject(subject: Subject | str | Path) -> Subject:
    return subject if isinstance(subject, Subject) else Subject.load(subject)


def custom_diffusion_state_dict(subject: Subject, unet) -> dict[str, torch.Tensor]:
    """Full trained weights ``W_base + ΔW`` (and ``b + Δb``) under diffusers' Custom Diffusion processor keys."""
    tensors: dict[str, torch.Tensor] = {}
    for layer in sorted(set(subject.deltas) | set(subject.bias_deltas)):
        attn = unet.get_submodule(layer)
        for proj, delta in subject.deltas.get(layer, {}).items():
            linear = attn.to_out[0] if proj == "to_out.0" else getattr(attn, proj)
            if tuple(linear.weight.shape) != tuple(delta.shape):
                raise SubjectgenError(
                    f"`{layer}.{proj}`: the base UNet's weight is {tuple(linear.weight.shape)}, the subject's delta "
                    f"{tuple(delta.shape)}; export against the base model the subject was trained on."
                )
            tensors[f"{layer}.processor.{CD_PROCESSOR_WEIGHTS[proj]}.weight"] = linear.weight.detach().float().cpu() + delta.float()
        if layer in subject.bias_deltas:
            bias = attn.to_out[0].bias.detach().float().cpu()
            tensors[f"{layer}.processor.{CD_PROCESSOR_WEIGHTS['to_out.0']}.bias"] = bias + subject.bias_deltas[layer].float()
    return tensors


def load_base_unet(base: str | Path):
    """The UNet of a diffusers base model (local folder or Hub id) — all that Custom Diffusion export needs."""
    from diffusers import UNet2DConditionModel

    try:
        return UNet2DConditionModel.from_pretrained(str(base), subfolder="unet")
    except (OSError, ValueError) as error:
        raise SubjectgenError(f"could not load the base UNet from {base!r}: {error}. Pass --base MODEL.") from error


def export_diffusers(subject: Subject | str | Path, out: str | Path, *, base_unet=None) -> list[Path]:
    """Write the diffusers textual-inversion file (and Custom Diffusion weights if the subject has deltas)."""
    subject = _as_subject(subject)
    out = Path(out)
    rows = subject.config.token_rows()
    written = []
    for position, (encoder, table) in enumerate(subject.token_tables.items()):
        for index, (token, _count) in enumerate(subject.config.tokens):
            # the first token in learned_embeds.safetensors; the further people of a merged subject in their own
            # files; a further text encoder's rows in files named after it
            name = TI_FILE if index == 0 else f"learned_embeds-{file_stem(token)}.safetensors"
            if position:
                name = name.replace("learned_embeds", f"learned_embeds_{encoder}", 1)
            written.append(atomic_save_safetensors(out / name, {token: table[rows[token]].float()},
                                                   metadata={"format": "pt"}))
    if subject.deltas or subject.bias_deltas:
        if base_unet is None:
            raise SubjectgenError("this subject has Custom Diffusion deltas: exporting full weights needs the base model (--base).")
        tensors = custom_diffusion_state_dict(subject, base_unet)
        written.append(atomic_save_safetensors(out / CD_FILE, tensors, metadata={"format": "pt"}))
    return written


def export_a1111(subject: Subject | str | Path, out_file: str | Path, *, token_only: bool = False) -> Path:
    """Write an AUTOMATIC1111 embedding (``.safetensors`` or ``.pt``) holding the subject's token vectors."""
    subject = _as_subject(subject)
    out_file = Path(out_file)
    if subject.config.extra_tokens:
        raise SubjectgenError(
            f"an A1111 embedding holds one token, and this subject holds {len(subject.config.tokens)} "
            f"({', '.join(t for t, _ in subject.config.tokens)}); export with --format lora, which writes one "
            "embedding per token.")
    if (subject.deltas or subject.bias_deltas) and not token_only:
        raise SubjectgenError(
            "an A1111 embedding holds only token vectors, and this subject also has Custom Diffusion weight deltas; "
            "export with --format diffusers, or pass --token-only to drop the deltas knowingly."
        )
    tables = embedding_tables(subject, slice(None), torch.float32)
    if out_file.suffix == ".safetensors":
        return atomic_save_safetensors(out_file, tables, metadata={"format": "pt"})
    if out_file.suffix != ".pt":
        raise SubjectgenError(f"{out_file}: an A1111 embedding ends in .safetensors or .pt.")
    if len(tables) > 1:
        raise SubjectgenError(f"{out_file}: a {subject.config.model_family.title} embedding holds {len(tables)} "
                              f"tables ({', '.join(tables)}), written as .safetensors only; name the file *.safetensors.")
    vectors = next(iter(tables.values()))
    data = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": vectors},
        "name": subject.config.token,
        "step": int(subject.config.training.get("steps", 0) or 0),
        "sd_checkpoint": None,
        "sd_checkpoint_name": subject.config.base_model,
    }
    return atomic_write(out_file, lambda tmp: torch.save(data, tmp))
