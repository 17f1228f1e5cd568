"""What the training loop (:mod:`subjectgen_training.trainer.loop`) needs before its first step, built from one
resolved config: the accelerator, the person tokens in every tokenizer, the trainable token rows and the method's
weights attached to the models (frozen parts cast to the compute dtype), the cached photo and class latents, and
the optimizer. Each function returns what it builds; the loop's :class:`~subjectgen_training.trainer.loop.Trainer`
holds the results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from subjectgen_diffusers.errors import SubjectgenError
from subjectgen_training.models.model_parts import cast_frozen_weights
from subjectgen_training.models.text_features import conditioning_rows

PREDICTION_TYPES = ("epsilon", "v_prediction")  # what both references train against; any other is refused
WEIGHT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def release_other_precision(mixed_precision: str) -> None:
    """accelerate keeps one process-wide state and refuses a second ``Accelerator`` with another mixed precision. A
    single process that trains again (the web UI's worker, a notebook, tests) may change it: reset that state then.
    Under a distributed launch the state is the launcher's and stays."""
    from accelerate.state import AcceleratorState, PartialState

    state = AcceleratorState._shared_state
    if state and PartialState().num_processes == 1 and str(state.get("_mixed_precision")) != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def build_accelerator(config, out):
    """The run's ``Accelerator`` (mixed precision, gradient accumulation, trackers, the CPU where there is no GPU)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    release_other_precision(config.mixed_precision)
    return Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        cpu=not torch.cuda.is_available(),
        log_with=config.log_with,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )


def add_person_tokens(config, family, tokenizers) -> dict[str, list[list[int]]]:
    """Per text encoder, one group of consecutive ids per person (a joint run has several), all added before the
    model loads; every encoder's tokenizer gets the same token strings."""
    from subjectgen_training.models.token_rows import add_token_to_tokenizer

    return {slot.encoder: [add_token_to_tokenizer(tokenizers[slot.tokenizer], person.token, config.num_vectors)
                           for person in config.people()]
            for slot in family.text_encoders}


def weight_dtype_of(mixed_precision: str) -> torch.dtype:
    return WEIGHT_DTYPES.get(mixed_precision, torch.float32)


def prepare_models(config, parts, method, encoder_token_groups: dict[str, list[list[int]]], device) -> dict:
    """Splice the trainable token rows into every text encoder (from the method's starts), attach the method's
    weights to the UNet, move the models to ``device`` and cast the frozen weights; return the token rows by encoder."""
    from subjectgen_training.models.text_features import encoder_views
    from subjectgen_training.models.token_rows import splice_token_rows

    prediction_type = parts.noise_scheduler.config.prediction_type
    if prediction_type not in PREDICTION_TYPES:
        raise SubjectgenError(f"the base model's scheduler has prediction_type {prediction_type!r}; training "
                              f"supports {list(PREDICTION_TYPES)}, as both references do: use a Stable Diffusion "
                              "1.x/2.x base or fix its scheduler_config.json.")
    views = encoder_views(parts)
    ids = {view.name: [i for group in encoder_token_groups[view.name] for i in group] for view in views}
    for view in views:
        view.text_encoder.resize_token_embeddings(max(ids[view.name]) + 1, mean_resizing=False)
    # every start is computed before any splice: a start may read another encoder's features (of an empty prompt)
    initial = {view.name: torch.cat([method.initial_rows_for(view, group) for group in encoder_token_groups[view.name]])
               for view in views}
    token_rows = {view.name: splice_token_rows(view.text_encoder, ids[view.name], initial[view.name]) for view in views}
    # float32 copies, before the cast below: deltas subtract a float32 start
    method.attach(parts.unet, parts.family.cd_layers(parts.unet))
    text_encoders = list(parts.text_encoders.values())
    for module in (*text_encoders, parts.vae, parts.unet):
        module.to(device)
    # the VAE stays float32: it encodes once, then leaves the device. Under fp16 the frozen text encoders stay
    # float32 too, as both references keep them (their fp16 forward runs under autocast)
    cast_frozen_weights((parts.unet,) if config.mixed_precision == "fp16" else (*text_encoders, parts.unet),
                        weight_dtype_of(config.mixed_precision))
    if config.gradient_checkpointing:
        parts.unet.enable_gradient_checkpointing()
        parts.unet.train()
        for text_encoder in text_encoders:
            text_encoder.gradient_checkpointing_enable()
            text_encoder.train()
    return token_rows


@dataclass
class TrainingCaches:
    """The photos' and class images' latents, encoded once, and what the loop draws from them."""

    captions_by_person: list  # a CaptionMaker per person (a joint run has several)
    instance: Any  # the photos' cached views (latent_cache.encode_photo_views)
    sampleable: list[int]  # the views a step may draw (not the plain views when random rescale is on)
    reg: Any = None  # the class images' latents (latent_cache.encode_regularization), or None without prior loss
    reg_captions: list[str] | None = None  # per class image, the prompt it trains under
    class_states: dict | None = None  # per class prompt, its conditioning (computed once: no trainable token)


def build_caches(config, parts, data, encode_text: Callable[..., Any], progress: bool) -> TrainingCaches:
    """Encode the photos (every flip/rescale view) and the class images once with the VAE, then move it off the
    device; ``encode_text(prompts, grad=False)`` gives the class prompts' conditioning."""
    from subjectgen_training.data.captions import CaptionMaker
    from subjectgen_training.data.latent_cache import encode_photo_views, encode_regularization

    captions = [CaptionMaker(config.prompt, person.token, config.num_vectors, config.caption_templates)
                for person in config.people()]
    instance = encode_photo_views(
        parts.vae, data.photos, config.resolution, random_rescale=config.random_rescale,
        variants=config.rescale_variants, seed=config.seed, face_masks=config.mask_loss,
        background_weight=config.mask_background_weight, progress=progress,
    )
    caches = TrainingCaches(captions, instance,
                            [i for i in range(len(instance)) if not (config.random_rescale and instance.plain[i])])
    if data.reg_photos:
        caches.reg = encode_regularization(parts.vae, data.reg_photos, config.resolution, progress=progress)
        # every class image trains under the class prompt, as in both references (whatever prompt drew it)
        caches.reg_captions = [config.class_prompt for _ in caches.reg.source]
        unique = sorted(set(caches.reg_captions))
        caches.class_states = dict(zip(unique, conditioning_rows(encode_text(unique, grad=False))))
    parts.vae.to("cpu")  # the VAE is not needed again (validation images move it back)
    return caches


def build_optimizer(config, accelerator, token_rows: dict, method, rates):
    """AdamW (betas 0.9/0.999, eps 1e-8, weight decay 1e-2 as both references), one group per rate, prepared by
    accelerate (which makes it skip steps inside a gradient-accumulation window)."""
    groups = [{"params": [r.rows for r in token_rows.values()], "lr": rates.token_lr}]
    weights = list(method.weight_parameters().values())
    if weights:
        groups.append({"params": weights, "lr": rates.lr})
    optimizer_class = torch.optim.AdamW
    if config.use_8bit_adam:  # availability checked in check_inputs
        import bitsandbytes as bnb

        optimizer_class = bnb.optim.AdamW8bit
    return accelerator.prepare(optimizer_class(groups, weight_decay=config.adam_weight_decay))


def format_rates(config, rates, num_processes: int) -> str:
    """The run-start line: given and effective rates, and why they differ."""
    how = "scaled by the method's rule" if config.scale_lr else "as given (--no-scale-lr)"
    weights = "none trained" if rates.lr is None else f"{config.lr:g} -> effective_lr {rates.lr:g}"
    return (f"learning rates ({how}; batch {config.batch_size}, gradient accumulation "
            f"{config.gradient_accumulation_steps}, processes {num_processes}, prior preservation "
            f"{'on' if config.reg_dir else 'off'}): weight deltas {weights}; token rows {config.token_lr:g} -> "
            f"effective_token_lr {rates.token_lr:g}")
