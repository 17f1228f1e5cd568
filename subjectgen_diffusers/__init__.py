"""subjectgen-diffusers: load a person taught to Stable Diffusion (Custom Diffusion, Cross Initialization or both).

    from diffusers import StableDiffusionPipeline
    from subjectgen_diffusers import load_subject

    token = load_subject(pipe, "path/or/hub-repo")      # e.g. "<s1>"
    image = pipe(f"a photo of {token} on a beach").images[0]

Names are imported lazily so that ``import subjectgen_diffusers`` stays instant (no torch/diffusers import).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_subject": "loader",
    "unload_subject": "loader",
    "set_subject_scale": "loader",
    "loaded_subjects": "loader",
    "SubjectLoaderMixin": "pipeline",
    "SubjectPipeline": "pipeline",
    "SubjectAttnProcessor": "attention",
    "Subject": "subject_format",
    "SubjectConfig": "subject_format",
    "SubjectFormatError": "subject_format",
    "SubjectgenError": "errors",
    "read_subject": "formats",
    "export_diffusers": "export",
    "export_a1111": "export",
    "export_lora": "lora_export",
    "compress_subject": "compress",
    "merge_subjects": "merge",
    "MergeError": "merge",
    "push_subject_to_hub": "hub",
    "push_to_hub": "hub",
    "render_subject_card": "hub",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .attention import SubjectAttnProcessor
    from .errors import SubjectgenError
    from .compress import compress_subject
    from .export import export_a1111, export_diffusers
    from .lora_export import export_lora
    from .merge import MergeError, merge_subjects
    from .formats import read_subject
    from .hub import push_subject_to_hub, push_to_hub, render_subject_card
    from .loader import load_subject, loaded_subjects, set_subject_scale, unload_subject
    from .pipeline import SubjectLoaderMixin, SubjectPipeline
    from .subject_format import Subject, SubjectConfig, SubjectFormatError


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'subjectgen_diffusers' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
