"""The text side of a base model as the training code sees it: one :class:`EncoderView` per text encoder, and the
batching of the UNet conditioning the model family computes (``subjectgen_diffusers.families``).

A view's ``features(ids)`` are that encoder's share of what the pipeline feeds the UNet's cross-attention, taken from
the family's own ``unet_conditioning`` (the one authority; SD 1.x: the final-layer-normed last hidden state; SDXL:
the penultimate hidden states, concatenated in slot order, so encoder ``i``'s share is its column slice of the
context). Cross Initialization starts each encoder's new rows from these features.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch


@dataclass
class EncoderView:
    """One text encoder: the pipeline attribute it sits at, its tokenizer and module, and its UNet features."""

    name: str  # "text_encoder", "text_encoder_2", ...
    tokenizer: object
    text_encoder: object
    features: Callable[[torch.Tensor], torch.Tensor]  # ids [B, L] -> [B, L, width], as the UNet receives them


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """``[B, model_max_length]`` ids padded and truncated as the diffusers pipelines tokenise a prompt."""
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def encoder_views(parts) -> list[EncoderView]:
    """A view per text encoder of ``parts`` (:class:`subjectgen_training.models.model_parts.ModelParts`), in slot order."""
    slots = parts.slots()

    def features_of(index: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def features(ids: torch.Tensor) -> torch.Tensor:
            # the other encoders read an empty prompt; only this encoder's column slice of the context is kept
            ids_list = [ids if i == index else tokenize(tokenizer, [""] * ids.shape[0])
                        for i, (_, tokenizer, _) in enumerate(slots)]
            context = parts.family.unet_conditioning(parts, ids_list).encoder_hidden_states
            widths = parts.family.text_widths(parts)
            return torch.split(context, [widths[slot.encoder] for slot, _, _ in slots], dim=-1)[index]
        return features

    return [EncoderView(slot.encoder, tokenizer, encoder, features_of(i))
            for i, (slot, tokenizer, encoder) in enumerate(slots)]


# -- batching a family's UNetConditioning (encoder_hidden_states plus optional added_cond_kwargs) --------------------
def map_conditioning(cond, fn: Callable[[torch.Tensor], torch.Tensor]):
    """The same conditioning with ``fn`` applied to every tensor in it."""
    added = None if cond.added_cond_kwargs is None else {k: fn(v) for k, v in cond.added_cond_kwargs.items()}
    return replace(cond, encoder_hidden_states=fn(cond.encoder_hidden_states), added_cond_kwargs=added)


def concat_conditioning(conds: list):
    """Several conditionings stacked along the batch."""
    first = conds[0]
    added = None if first.added_cond_kwargs is None else {
        key: torch.cat([c.added_cond_kwargs[key] for c in conds]) for key in first.added_cond_kwargs}
    return replace(first, encoder_hidden_states=torch.cat([c.encoder_hidden_states for c in conds]),
                   added_cond_kwargs=added)


def conditioning_rows(cond) -> list:
    """One single-sample conditioning per batch row (the cache of class-prompt encodings)."""
    return [map_conditioning(cond, lambda t, i=i: t[i : i + 1]) for i in range(cond.encoder_hidden_states.shape[0])]


def cast_conditioning(cond, dtype: torch.dtype, device=None):
    """Floating tensors to ``dtype`` (the UNet's compute dtype), everything to ``device``."""
    return map_conditioning(cond, lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype))
