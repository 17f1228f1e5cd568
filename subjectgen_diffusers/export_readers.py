"""Which exported file each LoRA reader takes, what it applies, and how much of the subject it leaves out.

``subjectgen export --format lora`` writes a kohya-named LoRA (with the ``to_out`` bias deltas of Custom Diffusion's
``kv+q+out`` scope as ``diff_b`` and the token vectors bundled as ``bundle_emb``), a diffusers peft-keyed LoRA and the
embedding (:mod:`subjectgen_diffusers.lora_export`). The readers differ in what they take from those files:

- ComfyUI (``comfy/lora.py``, ModelPatcher), kohya's sd-scripts (``networks/lora.py``, merged or hooked) and
  InvokeAI 6.14 were run with their own loading code on an exported ``cd+cr`` subject: every weight pair arrived
  exactly; ComfyUI applied every ``diff_b``, sd-scripts reported them as unexpected keys and InvokeAI warned
  "Unexpected keys ... diff_b" (both apply nothing of them). ComfyUI logs "lora key not loaded" for ``bundle_emb``.
- diffusers was run here (``tests/test_plugin_lora_export.py``): its peft path applies the bias (``lora_B.bias``).
- AUTOMATIC1111 and Forge were read in their sources, not run: A1111's Lora extension applies ``diff_b`` only to
  full-weight ``diff`` modules, not beside ``lora_up``/``lora_down``; Forge patches weights with ComfyUI's code.

What a reader leaves out is sized on the noise prediction, where it matters (:func:`bias_effect_share`):

    dropped share = ‖ε(tokens + ΔW + Δb) − ε(tokens + ΔW)‖ / ‖ε(tokens + ΔW + Δb) − ε(tokens)‖

ε is the base UNet's noise prediction on the subject's own prompt for fixed noise latents at timesteps 200, 500 and
800; "tokens" is the base model with the subject's token vectors, ΔW the weight deltas, Δb the bias deltas. It is the
part of what the weight deltas change in ε that a reader without ``diff_b`` does not reproduce (0: nothing lost).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .subject_format import Subject

SHARE_TIMESTEPS = (200, 500, 800)
SHARE_SEEDS = 2
DROPPED_SHARE_DEFINITION = (
    "‖ε(tokens+ΔW+Δb) − ε(tokens+ΔW)‖ / ‖ε(tokens+ΔW+Δb) − ε(tokens)‖: the base UNet's noise prediction ε on the "
    f"subject's own prompt, {SHARE_SEEDS} fixed noise latents x timesteps {list(SHARE_TIMESTEPS)}; the share of the "
    "weight deltas' change of ε that a reader without the to_out bias deltas (diff_b) does not reproduce")


@dataclass(frozen=True)
class Reader:
    """One tool that reads the exported files. ``files``: which written files to use (keys of :func:`_files`)."""

    name: str
    files: tuple[str, ...]
    where: str
    applies: str
    applies_bias: bool
    checked: str  # "run with its own loader" or "read in its source"


READERS = (
    Reader("A1111", ("kohya",), "models/Lora; prompt <lora:{kohya_stem}:1> a photo of {word}",
           "lora_up/lora_down/alpha and the bundled embedding (bundle_emb); diff_b only for full-weight 'diff' "
           "modules, so not here", False, "read in its source (extensions-builtin/Lora)"),
    Reader("Forge", ("kohya",), "models/Lora; prompt <lora:{kohya_stem}:1> a photo of {word}",
           "lora_up/lora_down/alpha, diff_b (ComfyUI's weight patching) and the bundled embedding", True,
           "read in its source"),
    Reader("ComfyUI", ("kohya", "embedding"), "models/loras (LoraLoader) + models/embeddings, prompt embedding:{word}",
           "lora_up/lora_down/alpha and diff_b; not bundle_emb ('lora key not loaded'): use the embedding file", True,
           "run with its own loader (comfy/lora.py)"),
    Reader("sd-scripts", ("kohya", "embedding"), "networks/lora.py (merged or hooked) + the embedding",
           "lora_up/lora_down/alpha; diff_b reported as unexpected keys and not applied", False,
           "run with its own loader (networks/lora.py); its embedding reading not checked"),
    Reader("InvokeAI", ("kohya", "embedding"), "models: LoRA + textual-inversion embedding",
           "lora_up/lora_down/alpha; diff_b skipped ('Unexpected keys ... diff_b'); it reads LyCORIS bias keys "
           "(bias_indices/bias_values/bias_size), not diff_b", False, "run with its own loader (InvokeAI 6.14)"),
    Reader("diffusers", ("diffusers", "embedding"), "pipe.load_lora_weights(folder, weight_name=...) + "
           "pipe.load_textual_inversion(embedding, token=...)",
           "lora_A/lora_B and the bias delta as lora_B.bias (peft); the embedding by load_textual_inversion", True,
           "run here (tests/test_plugin_lora_export.py)"),
)


def _files(result) -> dict[str, str | None]:
    return {"kohya": result.kohya.name if result.kohya else None,
            "diffusers": result.diffusers.name if result.diffusers else None,
            "embedding": result.embedding.name}


def reader_table(subject: Subject, result, dropped_share: float | None) -> list[dict]:
    """One row per reader: the files to use, what it applies, and the dropped share (None: not measured).

    ``result`` is :func:`subjectgen_diffusers.lora_export.export_lora`'s :class:`LoraExport`."""
    files = _files(result)
    word = result.embedding.stem
    has_bias = bool(subject.bias_deltas)
    rows = []
    for reader in READERS:
        if result.kohya is None:  # a token-only subject: the embedding is all there is, and every reader reads it
            use, applies, drops, share = [files["embedding"]], "the embedding (token vectors)", "nothing", 0.0
        else:
            use = [files[key] for key in reader.files]
            applies = reader.applies
            lost = has_bias and not reader.applies_bias
            drops = f"the to_out bias deltas of {len(subject.bias_deltas)} layers" if lost else "nothing"
            share = (dropped_share if lost else 0.0)
        rows.append({"reader": reader.name, "files": use,
                     "where": reader.where.format(kohya_stem=(result.kohya.stem if result.kohya else word), word=word),
                     "applies": applies, "drops": drops, "dropped_share": share, "checked": reader.checked})
    return rows


def format_table(rows: list[dict]) -> str:
    """The table as the command prints it."""
    lines = ["reader       drops (share of the deltas' effect on the noise prediction)   files"]
    for row in rows:
        share = row["dropped_share"]
        size = "not measured (pass --base)" if share is None else f"{share:.1%}"
        dropped = "nothing" if row["drops"] == "nothing" else f"{row['drops']}: {size}"
        lines.append(f"{row['reader']:<12} {dropped:<62} {', '.join(row['files'])}")
    return "\n".join(lines)


def subject_prompt(subject: Subject) -> str:
    """The prompt the subject was trained with (``{}`` = its token), or a plain one."""
    prompt = (subject.config.training or {}).get("prompt") or "a photo of {} person"
    return prompt.replace("{}", subject.config.token)


@torch.no_grad()
def bias_effect_share(pipe, subject: Subject) -> float | None:
    """The dropped share of the module docstring for ``subject`` on ``pipe`` (a pipeline of its base model, without
    any subject loaded); None when the subject has no bias deltas. The pipeline is left as it was."""
    from .loader import load_subject, set_subject_scale, unload_subject

    if not subject.bias_deltas or not subject.deltas:
        return None
    unet = pipe.unet
    size = unet.config.sample_size
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(SHARE_SEEDS, unet.config.in_channels, size, size, generator=generator)
    latents = latents.repeat(len(SHARE_TIMESTEPS), 1, 1, 1).to(unet.device, unet.dtype)
    timesteps = torch.tensor(SHARE_TIMESTEPS).repeat_interleave(SHARE_SEEDS).to(unet.device)

    def predict(states):
        return unet(latents, timesteps, states.expand(latents.shape[0], -1, -1)).sample.double()

    token = load_subject(pipe, subject)
    try:
        states, _ = pipe.encode_prompt(subject_prompt(subject), unet.device, 1, False)
        full = predict(states)
        set_subject_scale(pipe, token, 0.0)
        tokens_only = predict(states)
    finally:
        unload_subject(pipe, token)
    without_bias = dataclasses.replace(subject, bias_deltas={})
    token = load_subject(pipe, without_bias)
    try:
        no_bias = predict(states)
    finally:
        unload_subject(pipe, token)
    effect = float((full - tokens_only).norm())
    return float((full - no_bias).norm()) / effect if effect > 0 else 0.0
