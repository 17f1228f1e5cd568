"""Model families: the one place that knows how Stable Diffusion 1.x/2.x (``sd1``) and SDXL (``sdxl``) differ.

Everything else (loader, exporter, trainer, checker, CLI) asks a :class:`ModelFamily` instead of assuming a family.
A family is one module defining a ``ModelFamily`` subclass plus one ``register_family(...)`` line (see ``sd1.py``,
``sdxl.py``); the built-in ones register when this package is imported.

API
- ``register_family(family) -> family``; ``get_family(name)``; ``families()`` (registration order).
- ``family_of_pipeline(pipe)``: the family whose components/UNet config match a loaded pipeline (latest registered
  asked first).
- ``family_of_configs(model_index, unet_config)`` and ``family_of_base(base, revision=None)``: the same from a
  diffusers folder or Hub id's ``model_index.json`` + ``unet/config.json``, without loading weights.
- On a family (class attributes, then methods):
  ``name`` (``"sd1"``), ``title``, ``pipeline_class_name`` (``pipeline_class()`` imports it), ``hub_tag`` (model
  cards), ``native_resolution``,
  ``text_encoders``: a tuple of :class:`TextEncoderSlot` (``encoder``/``tokenizer`` attribute names on a pipeline,
  ``embedding_key`` of its table in A1111/ComfyUI embedding files), in the order the UNet's context concatenates them,
  ``text_widths(components)`` -> ``{encoder attribute: hidden width}`` (``components``: a pipeline, or anything with
  those attributes),
  ``cd_layers(unet)``: names of the attention modules Custom Diffusion trains (the cross-attention ``attn2`` modules;
  which projections is the method's ``cd_scope``),
  ``kohya_module(layer, proj, unet_config=None)``: the kohya LoRA module name of ``unet.<layer>.<proj>``,
  ``unet_conditioning(components, input_ids, *, original_size=None, crop=(0, 0), target_size=None)``: a
  :class:`UNetConditioning` computed as the family's diffusers pipeline computes it (``input_ids``: one tensor
  ``[B, 77]`` per text encoder, in ``text_encoders`` order; SD1 ignores the sizes),
  ``matches(components, unet_config)``: whether a set of present component names and a UNet config are this family.
"""

from .base import (  # noqa: F401  (the package's API)
    ModelFamily,
    TextEncoderSlot,
    UNetConditioning,
    families,
    family_of_base,
    family_of_configs,
    family_of_pipeline,
    get_family,
    register_family,
    unregister_family,
)

from . import sd1, sdxl  # noqa: E402  (the built-in families register themselves; one line per family)

SD1 = sd1.FAMILY
SDXL = sdxl.FAMILY
