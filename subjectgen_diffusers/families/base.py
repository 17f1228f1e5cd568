"""The family base class and registry (the families package re-exports them; ``sd1``/``sdxl`` import them from here,
so registering a family never imports the package that lists the built-in ones)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import SubjectgenError


@dataclass(frozen=True)
class TextEncoderSlot:
    """One text encoder of a pipeline: its attribute names and its table's key in A1111/ComfyUI embedding files."""

    encoder: str  # "text_encoder", "text_encoder_2"
    tokenizer: str  # "tokenizer", "tokenizer_2"
    embedding_key: str  # "emb_params" (SD 1.x/2.x), "clip_l" / "clip_g" (SDXL)


@dataclass
class UNetConditioning:
    """What the UNet is called with besides the noisy latents and the timestep."""

    encoder_hidden_states: Any  # torch.Tensor [B, 77, cross_attention_dim]
    added_cond_kwargs: dict[str, Any] | None = None  # SDXL: {"text_embeds": [B, pooled], "time_ids": [B, 6]}

    def unet_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"encoder_hidden_states": self.encoder_hidden_states}
        if self.added_cond_kwargs is not None:
            kwargs["added_cond_kwargs"] = self.added_cond_kwargs
        return kwargs


class ModelFamily:
    """Base class of a family; subclasses set the class attributes and ``unet_conditioning`` / ``matches``."""

    name: ClassVar[str]
    title: ClassVar[str]
    pipeline_class_name: ClassVar[str]
    hub_tag: ClassVar[str]
    native_resolution: ClassVar[int]
    text_encoders: ClassVar[tuple[TextEncoderSlot, ...]]
    cd_attention: ClassVar[str] = "attn2"  # Custom Diffusion trains the cross-attention modules

    def pipeline_class(self) -> type:
        import diffusers

        return getattr(diffusers, self.pipeline_class_name)

    def text_widths(self, components) -> dict[str, int]:
        return {slot.encoder: int(getattr(components, slot.encoder).get_input_embeddings().weight.shape[1])
                for slot in self.text_encoders}

    def cd_layers(self, unet) -> list[str]:
        return sorted(name for name, module in unet.named_modules()
                      if name.endswith(self.cd_attention) and getattr(module, "is_cross_attention", False))

    def kohya_module(self, layer: str, proj: str, unet_config=None) -> str:
        """kohya's name of ``unet.<layer>.<proj>``: ``lora_unet_`` + the module path with ``_`` (SD 1.x naming).
        ``unet_config``: the base UNet's config where the naming depends on it (None: the family's standard UNet)."""
        return "lora_unet_" + f"{layer}.{proj}".replace(".", "_")

    def unet_conditioning(self, components, input_ids, *, original_size=None, crop=(0, 0), target_size=None):
        raise NotImplementedError

    def matches(self, components: set[str], unet_config: dict[str, Any]) -> bool:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<model family {self.name!r}>"


_FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Add a family (idempotent for the same class); another family under a taken name is an error."""
    existing = _FAMILIES.get(family.name)
    if existing is not None and type(existing) is not type(family):
        raise SubjectgenError(f"model family {family.name!r} is already registered.")
    _FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Remove a family (for tests that register their own)."""
    _FAMILIES.pop(name, None)


def families() -> list[ModelFamily]:
    return list(_FAMILIES.values())


def get_family(name: str) -> ModelFamily:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise SubjectgenError(f"unknown model family {name!r}; known: {sorted(_FAMILIES)}.") from None


def _config_dict(config) -> dict[str, Any]:
    return dict(config) if config is not None else {}


def family_of_configs(components: set[str], unet_config: dict[str, Any]) -> ModelFamily:
    """The family whose ``matches`` accepts these present components and UNet config; the latest registered is
    asked first, so a more specific family registered later takes precedence over a built-in one."""
    for family in reversed(_FAMILIES.values()):
        if family.matches(set(components), unet_config):
            return family
    raise SubjectgenError(f"this model (components {sorted(components)}) is none of the known model families "
                          f"{sorted(_FAMILIES)}; subjectgen supports Stable Diffusion 1.x/2.x and SDXL base models.")


def family_of_pipeline(pipe) -> ModelFamily:
    components = {name for name, value in getattr(pipe, "components", {}).items() if value is not None}
    if not components:  # not a DiffusionPipeline: look at the attributes a family could name
        components = {name for name in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
                      if getattr(pipe, name, None) is not None}
    unet = getattr(pipe, "unet", None)
    return family_of_configs(components, _config_dict(getattr(unet, "config", None)))


def family_of_base(base: str | Path, revision: str | None = None) -> ModelFamily:
    """The family of a diffusers folder or Hub id, from ``model_index.json`` and ``unet/config.json`` alone."""
    from ..base_configs import read_component_config, read_model_index

    index = read_model_index(base, revision)
    components = {name for name, value in index.items()
                  if not name.startswith("_") and isinstance(value, (list, tuple)) and value and value[0] is not None}
    return family_of_configs(components, read_component_config(base, "unet", revision))
