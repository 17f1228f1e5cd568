"""``SubjectLoaderMixin`` and ``SubjectPipeline``: Stable Diffusion with trained subjects as a first-class feature.

The mixin follows diffusers' loader-mixin pattern (``TextualInversionLoaderMixin``): ``load_subject``,
``unload_subject``, ``set_subject_scale`` and ``push_subject_to_hub`` as pipeline methods over the functions in
:mod:`subjectgen_diffusers.loader` and :mod:`subjectgen_diffusers.hub`. ``SubjectPipeline`` also fills ``{}`` in a
prompt with the loaded subject's token: ``pipe("a photo of {} at the beach")``.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import StableDiffusionPipeline

from . import hub, loader
from .errors import SubjectgenError


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


class SubjectPipeline(StableDiffusionPipeline, SubjectLoaderMixin):
    """A ``StableDiffusionPipeline`` that loads subjects at construction and fills ``{}`` in prompts."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, subject=None, subject_scale: float = 1.0, **kwargs):
        """Load the base model, then each subject in ``subject`` (a source or a list of sources)."""
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        sources = [] if subject is None else subject if isinstance(subject, (list, tuple)) else [subject]
        for source in sources:
            pipe.load_subject(source, scale=subject_scale)
        return pipe

    def __call__(self, prompt=None, *args, **kwargs):
        return super().__call__(self.fill_subject_prompt(prompt), *args, **kwargs)
