"""Stable Diffusion XL: two CLIP text encoders, penultimate hidden states concatenated, plus pooled text and size ids.

The conditioning follows diffusers 0.42.1 ``StableDiffusionXLPipeline.encode_prompt`` (``clip_skip=None``): each
encoder is called with the prompt's ids alone (no attention mask) and ``output_hidden_states=True``; its
``hidden_states[-2]`` (the penultimate layer, not final-layer-normed) are concatenated along the width,
``text_encoder`` first; the pooled text is ``text_encoder_2``'s ``text_embeds`` (the projected pooled output); and
``_get_add_time_ids`` makes ``time_ids = original_size + crop top-left + target_size`` (6 numbers, height first).
"""

from __future__ import annotations

from .base import ModelFamily, TextEncoderSlot, UNetConditioning, register_family


class SDXLFamily(ModelFamily):
    name = "sdxl"
    title = "Stable Diffusion XL"
    pipeline_class_name = "StableDiffusionXLPipeline"
    hub_tag = "stable-diffusion-xl"  # the Hub tag of models of this family (model cards)
    native_resolution = 1024
    text_encoders = (TextEncoderSlot("text_encoder", "tokenizer", "clip_l"),
                     TextEncoderSlot("text_encoder_2", "tokenizer_2", "clip_g"))

    layers_per_block = 2  # SDXL base 1.0 and its fine-tunes; a given UNet config overrides it

    def kohya_module(self, layer: str, proj: str, unet_config=None) -> str:
        """The ldm/SGM name SDXL LoRAs use: ``down_blocks.i.attentions.j`` -> ``input_blocks.{1 + i(L+1) + j}.1``,
        ``mid_block.attentions.0`` -> ``middle_block.1``, ``up_blocks.i.attentions.j`` -> ``output_blocks.{i(L+1) +
        j}.1`` (``L`` = layers_per_block; the inverse of diffusers' ``_maybe_map_sgm_blocks_to_diffusers``)."""
        per_level = int(dict(unet_config or {}).get("layers_per_block", self.layers_per_block)) + 1
        parts = layer.split(".")
        if parts[0] == "down_blocks" and parts[2] == "attentions":
            head, rest = f"input_blocks.{1 + int(parts[1]) * per_level + int(parts[3])}.1", parts[4:]
        elif parts[0] == "up_blocks" and parts[2] == "attentions":
            head, rest = f"output_blocks.{int(parts[1]) * per_level + int(parts[3])}.1", parts[4:]
        elif parts[0] == "mid_block" and parts[1] == "attentions" and parts[2] == "0":
            head, rest = "middle_block.1", parts[3:]
        else:
            raise ValueError(f"`{layer}` is not an attention module of an SDXL UNet.")
        return "lora_unet_" + ".".join([head, *rest, proj]).replace(".", "_")

    def add_time_ids(self, original_size, crop, target_size, batch: int, dtype=None, device=None):
        """``StableDiffusionXLPipeline._get_add_time_ids``: ``[original_size + crop + target_size]`` per sample."""
        import torch

        ids = list(tuple(original_size) + tuple(crop) + tuple(target_size))
        return torch.tensor([ids], dtype=dtype, device=device).repeat(batch, 1)

    def unet_conditioning(self, components, input_ids, *, original_size=None, crop=(0, 0), target_size=None):
        import torch

        hidden, pooled = [], None
        for slot, ids in zip(self.text_encoders, input_ids, strict=True):
            encoder = getattr(components, slot.encoder)
            out = encoder(ids.to(encoder.device), output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:  # encode_prompt: the first 2-d output[0] is the pooled one
                pooled = out[0]
            hidden.append(out.hidden_states[-2])
        context = torch.cat(hidden, dim=-1)
        if original_size is None or target_size is None:
            side = self.native_resolution
            original_size, target_size = original_size or (side, side), target_size or (side, side)
        time_ids = self.add_time_ids(original_size, crop, target_size, context.shape[0], context.dtype, context.device)
        return UNetConditioning(context, {"text_embeds": pooled, "time_ids": time_ids})

    def matches(self, components, unet_config):
        return ({"text_encoder", "text_encoder_2"} <= components
                and unet_config.get("addition_embed_type") == "text_time")


FAMILY = register_family(SDXLFamily())
