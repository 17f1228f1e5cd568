"""What each personalisation method means to a subject file: the one table of method names, Custom Diffusion scopes,
Custom Diffusion weight names and the multi-vector token spelling.

The subject format (``subject_format``), the Hub card (``hub``), the loaders (``loader``, ``formats``) and the
exporter read these, and so does the training side (``subjectgen_training.methods``), which registers its trainable methods
against the :class:`MethodInfo` entries here. A method that writes only token rows and/or Custom Diffusion deltas
needs nothing more from this package than one :func:`register_method_info` call.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SubjectgenError

# Custom Diffusion (Kumari et al., CVPR 2023): which attention projections a scope trains. "kv" is diffusers'
# `--freeze_model crossattn_kv`, "kv+q+out" its `crossattn` (examples/custom_diffusion/train_custom_diffusion.py).
CD_SCOPES: dict[str, tuple[str, ...]] = {"kv": ("to_k", "to_v"), "kv+q+out": ("to_q", "to_k", "to_v", "to_out.0")}
PROJECTIONS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
# The attribute of diffusers' CustomDiffusionAttnProcessor(2_0) holding each projection's trained copy; also the
# middle of the keys of `pytorch_custom_diffusion_weights.safetensors` (`{layer}.processor.{name}.weight`).
CD_PROCESSOR_WEIGHTS: dict[str, str] = {
    "to_q": "to_q_custom_diffusion",
    "to_k": "to_k_custom_diffusion",
    "to_v": "to_v_custom_diffusion",
    "to_out.0": "to_out_custom_diffusion.0",
}


def token_strings(token: str, num_vectors: int) -> list[str]:
    """``<tok>``, ``<tok>_1``, ...: diffusers' multi-vector textual-inversion spelling (``load_textual_inversion``)."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


@dataclass(frozen=True)
class MethodInfo:
    """A method as a subject file and its model card see it."""

    name: str  # the value of `method` in subject_config.json and of `--method`
    title: str  # human name on cards and reports
    note: str  # one paragraph for the model card
    hub_tag: str  # the Hub tag of the method
    has_deltas: bool  # the subject carries Custom Diffusion weight deltas (and `layers`, `cd_scope`)


METHODS: dict[str, MethodInfo] = {}


def register_method_info(info: MethodInfo) -> MethodInfo:
    """Add a method to the table (idempotent for the same entry); a different entry under a taken name is an error."""
    existing = METHODS.get(info.name)
    if existing is not None and existing != info:
        raise SubjectgenError(f"method {info.name!r} is already registered with a different description.")
    METHODS[info.name] = info
    return info


def method_info(name: str) -> MethodInfo:
    try:
        return METHODS[name]
    except KeyError:
        raise SubjectgenError(f"method must be one of {sorted(METHODS)}, got {name!r}.") from None


CUSTOM_DIFFUSION = register_method_info(MethodInfo(
    name="cd",
    title="Custom Diffusion",
    note="Custom Diffusion (Kumari et al., CVPR 2023) fine-tunes the cross-attention key/value projections together "
    "with a new modifier token; this repository stores the weight *deltas* ΔW = W_trained − W_base.",
    hub_tag="custom-diffusion",
    has_deltas=True,
))
CROSS_INITIALIZATION = register_method_info(MethodInfo(
    name="cr",
    title="Cross Initialization",
    note="Cross Initialization (Pang et al., CVPR 2024) is textual inversion whose token vectors start from the text "
    "encoder's output for the mean embedding of celebrity names, with an L2 pull back to that start.",
    hub_tag="cross-initialization",
    has_deltas=False,
))
CD_PLUS_CR = register_method_info(MethodInfo(
    name="cd+cr",
    title="Custom Diffusion + Cross Initialization",
    note="The token is learned with Cross Initialization (Pang et al., CVPR 2024) while Custom Diffusion "
    "(Kumari et al., CVPR 2023) fine-tunes the cross-attention projections; weight deltas ΔW = W_trained − W_base.",
    hub_tag="custom-diffusion",
    has_deltas=True,
))
