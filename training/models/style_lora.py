"""Load a style LoRA into a text-to-image pipeline and make sure it took: one place for ``regularize`` and
``generate``.

diffusers only warns when none of a LoRA's keys match the model, which would silently give base-model images; here
that is an error that says what to pass instead.
"""

from __future__ import annotations

HINT = "Pass a LoRA file, folder or Hub id made for this model family (SD 1.x, SD 2.x or SDXL)."


def load_style_lora(pipe, lora: str, scale: float, *, model: str, error: type[Exception], flag: str = "--lora",
                    adapter_name: str = "style") -> None:
    """Load ``lora`` as adapter ``adapter_name`` at ``scale``; raise ``error`` when it cannot load or matches nothing."""
    try:
        pipe.load_lora_weights(lora, adapter_name=adapter_name)
    except (OSError, ValueError, KeyError, RuntimeError) as failure:
        lines = [line.strip() for line in str(failure).splitlines() if line.strip()] or [type(failure).__name__]
        summary = " ".join(lines[:2])[:300]  # a shape mismatch lists every layer: the first one says enough
        raise error(f"could not load {flag} {lora} into {model}: {summary}. {HINT}") from failure
    if not any(adapter_name in names for names in pipe.get_list_adapters().values()):
        raise error(f"{flag} {lora} has no weights that match {model}. {HINT}")
    pipe.set_adapters([adapter_name], adapter_weights=[scale])
