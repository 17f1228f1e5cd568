"""``SubjectLoaderMixin`` and ``SubjectPipeline``: Stable Diffusion with trained subjects as a first-class feature.

The mixin follows diffusers' loader-mixin pattern (``TextualInversionLoaderMixin``): ``load_subject``,
``unload_subject``, ``set_subject_scale`` and ``push_subject_to_hub`` as pipeline methods over the functions in
:mod:`subjectgen_diffusers.loader` and :mod:`subjectgen_diffusers.hub`. ``SubjectPipeline`` also fills ``{}`` in a
prompt with the loaded subject's token: ``pipe("a photo of {} at the beach")``. ``SubjectPipeline.from_pretrained``
returns the subject pipeline of the base's model family (:mod:`.families`, read from its configs): a
``StableDiffusionPipeline`` for SD 1.x/2.x, a ``StableDiffusionXLPipeline`` subclass for SDXL.
"""

from __future__ import annotations

import functools
from pathlib import Path

from diffusers import StableDiffusionPipeline

from . import hub, loader
from .errors import SubjectgenError
from .families import family_of_base, get_family


class SubjectLoaderMixin:
    """Pipeline methods to load, rescale, unload and publish subjects (needs ``tokenizer``, ``text_encoder``, ``unet``)."""

    def load_subject(self, source, *, token=None, scale=1.0, weight_name=None, revision=None, **hub_kwargs) -> str:
        return loader.load_subject(
            self, source, token=token, scale=scale, weight_name=weight_name, revision=revision, **hub_kwargs
        )

    def unload_subject(self, token: str | None = None) -> None:
        loader.unload_subject(self, token)

    def set_subject_scale(self, token: str, scale: float) -> None:
        loader.set_subject_scale(self, token, scale)

    @property
    def subject_tokens(self) -> list[str]:
        """Tokens of the loaded subjects, in load order."""
        return list(loader.loaded_subjects(self))

    def fill_subject_prompt(self, prompt):
        """Replace ``{}`` in a prompt (or list of prompts) with the token of the one loaded subject."""
        if prompt is None:
            return None
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not any("{}" in p for p in prompts):
            return prompt
        tokens = self.subject_tokens
        if len(tokens) != 1:
            raise SubjectgenError(
                f"`{{}}` in a prompt needs exactly one loaded subject, {len(tokens)} are loaded ({tokens}); "
                "write the subjects' tokens in the prompt instead."
            )
        filled = [p.replace("{}", tokens[0]) for p in prompts]
        return filled[0] if isinstance(prompt, str) else filled

    def push_subject_to_hub(self, folder: str | Path, repo_id: str, **kwargs):
        """Publish a subject folder with its model card (see :func:`subjectgen_diffusers.hub.push_subject_to_hub`)."""
        return hub.push_subject_to_hub(folder, repo_id, **kwargs)


class _SubjectPipelineMixin(SubjectLoaderMixin):
    """``from_pretrained(base, subject=...)`` of the base's family, and ``{}`` in prompts filled with the token."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, subject=None, subject_scale: float = 1.0, **kwargs):
        """Load the base model, then each subject in ``subject`` (a source or a list of sources)."""
        try:
            family = family_of_base(pretrained_model_name_or_path, kwargs.get("revision"))
        except SubjectgenError:  # configs not readable up front (e.g. a custom cache_dir): diffusers says what is wrong
            family = None
        if family is not None and not issubclass(cls, family.pipeline_class()):
            cls = subject_pipeline_class(family.name)
        pipe = super(_SubjectPipelineMixin, cls).from_pretrained(pretrained_model_name_or_path, **kwargs)
        sources = [] if subject is None else subject if isinstance(subject, (list, tuple)) else [subject]
        for source in sources:
            pipe.load_subject(source, scale=subject_scale)
        return pipe

    def __call__(self, prompt=None, *args, **kwargs):
        return super().__call__(self.fill_subject_prompt(prompt), *args, **kwargs)


class SubjectPipeline(_SubjectPipelineMixin, StableDiffusionPipeline):
    """A ``StableDiffusionPipeline`` that loads subjects at construction and fills ``{}`` in prompts
    (``from_pretrained`` of another family's base returns that family's subject pipeline)."""


@functools.cache
def subject_pipeline_class(family_name: str) -> type:
    """The subject pipeline of a family: its diffusers pipeline class with the subject methods (made once)."""
    family = get_family(family_name)
    base = family.pipeline_class()
    if base is StableDiffusionPipeline:
        return SubjectPipeline
    return type(f"Subject{base.__name__}", (_SubjectPipelineMixin, base), {"__module__": __name__})
