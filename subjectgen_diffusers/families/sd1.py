"""Stable Diffusion 1.x/2.x: one CLIP text encoder whose last hidden state is the UNet's context."""

from __future__ import annotations

from .base import ModelFamily, TextEncoderSlot, UNetConditioning, register_family


class SD1Family(ModelFamily):
    name = "sd1"
    title = "Stable Diffusion 1.x/2.x"
    pipeline_class_name = "StableDiffusionPipeline"
    hub_tag = "stable-diffusion"  # the Hub tag of models of this family (model cards)
    native_resolution = 512
    text_encoders = (TextEncoderSlot("text_encoder", "tokenizer", "emb_params"),)

    def unet_conditioning(self, components, input_ids, *, original_size=None, crop=(0, 0), target_size=None):
        # StableDiffusionPipeline.encode_prompt (clip_skip=None): text_encoder(ids)[0], the final-layer-normed last
        # hidden state
        (ids,) = input_ids
        encoder = components.text_encoder
        return UNetConditioning(encoder(ids.to(encoder.device))[0])

    def matches(self, components, unet_config):
        return ("text_encoder" in components and "text_encoder_2" not in components
                and unet_config.get("addition_embed_type") is None)


FAMILY = register_family(SD1Family())
