"""What a finished (or validating) training run writes: ``train_config.json`` (the resolved config and the rates the
optimizer used, local paths by name), the subject files (``subject_config.json`` + ``subject.safetensors``, exact
or as rank-R factors) and a validation image."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from subjectgen_diffusers.public_names import public_name, without_local_paths

PATH_FIELDS = ("base", "photos", "reg_dir", "out", "celeb_names")  # recorded by name, never as a local path


def recorded_config(trainer) -> dict:
    """``train_config.json``: the resolved config plus the rates the optimizer really used.

    Local paths are recorded by their folder's name (a Hub id as given): the file travels with the subject."""
    recorded = {**trainer.config.to_dict(), "effective_lr": trainer.rates.lr, "effective_token_lr": trainer.rates.token_lr,
                "num_processes": trainer.accelerator.num_processes}
    for name in PATH_FIELDS:
        if name in recorded:  # celeb_names: only methods with cross-initialised tokens have it
            recorded[name] = public_name(recorded[name])
    for person in recorded.get("subjects") or []:
        person["photos"] = public_name(person["photos"])
    return without_local_paths(recorded)

def build_subject(trainer):
    from subjectgen_diffusers.subject_format import Subject, SubjectConfig

    config, unet = trainer.config, trainer.parts.unet
    part = trainer.method.subject_parts()
    people = config.people()
    tables = {name: rows.rows.detach().float().cpu().clone() for name, rows in trainer.token_rows.items()}
    first = next(iter(tables))
    subject_config = SubjectConfig(
        method=config.method, token=people[0].token, num_vectors=config.num_vectors,
        extra_tokens={person.token: config.num_vectors for person in people[1:]},
        text_hidden_size=trainer.rows.embedding_dim, base_model=public_name(config.base),
        family=trainer.parts.family.name,
        extra_encoders={name: rows.embedding_dim for name, rows in trainer.token_rows.items() if name != first},
        cross_attention_dim=unet.config.cross_attention_dim if part.layers else None, layers=part.layers,
        cd_scope=part.cd_scope if part.layers else None,
        training=without_local_paths({
            **trainer.method.describe(), "steps": config.steps, "seed": config.seed, "lr": config.lr,
            "token_lr": config.token_lr, "scale_lr": config.scale_lr, "effective_lr": trainer.rates.lr,
            "effective_token_lr": trainer.rates.token_lr, "resolution": config.resolution,
            "batch_size": config.batch_size, "prompt": config.prompt, "class_prompt": config.class_prompt,
            **({"subjects": [{"token": p.token, "photos": public_name(p.photos),
                              "class_prompt": p.class_prompt or config.class_prompt} for p in people]}
               if config.subjects else {})}),
    )
    return Subject(subject_config, tables.pop(first), part.deltas, part.bias_deltas, extra_tables=tables)

def save_subject(trainer) -> Path:
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(trainer.config.save_dtype)
    if trainer.config.save_rank is not None:
        from subjectgen_diffusers.compress import save_compressed

        return save_compressed(trainer.build_subject(), trainer.out, rank=trainer.config.save_rank, dtype=dtype)
    return trainer.build_subject().save(trainer.out, dtype=dtype)

@torch.no_grad()
def save_validation_image(trainer, step: int) -> Path:
    from subjectgen_diffusers.atomic_io import atomic_save_image
    from subjectgen_training.models.token_rows import prompt_with_token

    parts, config = trainer.parts, trainer.config
    parts.vae.to(trainer.device)
    pipeline_class = parts.family.pipeline_class()
    known = {"vae": parts.vae, "unet": parts.unet, "scheduler": parts.sample_scheduler, **parts.tokenizers,
             **parts.text_encoders, "requires_safety_checker": False}
    required = [name for name, p in inspect.signature(pipeline_class.__init__).parameters.items()
                if name != "self" and p.default is inspect.Parameter.empty]
    # the family's pipeline from these parts; any other module it requires (safety checker, ...) is left out
    pipe = pipeline_class(**{name: known.get(name) for name in required},
                          **{name: value for name, value in known.items() if name not in required
                             and name in inspect.signature(pipeline_class.__init__).parameters})
    pipe.set_progress_bar_config(disable=True)
    prompt = prompt_with_token(config.validation_prompt, config.token, config.num_vectors)
    with trainer.autocast():
        image = pipe(prompt, num_inference_steps=25, height=config.resolution, width=config.resolution,
                     generator=torch.Generator().manual_seed(config.seed)).images[0]
    parts.vae.to("cpu")
    return atomic_save_image(trainer.out / "validation" / f"step-{step:07d}.png", image)
