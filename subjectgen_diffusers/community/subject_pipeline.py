"""Community-pipeline entry point for subjectgen-diffusers (needs ``pip install subjectgen-diffusers``).

    pipe = DiffusionPipeline.from_pretrained(base, custom_pipeline="path/to/subject_pipeline.py")
    token = pipe.load_subject("owner/subject-repo")
    image = pipe("a photo of {} in Paris").images[0]

diffusers picks the single ``DiffusionPipeline`` subclass defined in this file; everything else (the Custom Diffusion
delta processors, Cross Initialization / textual-inversion tokens, ``{}`` filling) comes from the installed package,
so a fix there reaches community-pipeline users too.
"""

import subjectgen_diffusers.pipeline as _subjectgen_pipeline


class SubjectPipeline(_subjectgen_pipeline.SubjectPipeline):
    """Stable Diffusion with ``load_subject`` / ``unload_subject`` / ``set_subject_scale`` and ``{}`` prompts."""
