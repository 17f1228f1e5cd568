"""The training loop shared by every registered method (``subjectgen_training.methods``); it never branches on a method's name.

Per step: draw cached photo latents (``latent_cache``), caption them with the token, run the text encoders (with
grad: the new token rows train), add noise at a random timestep (DDPM forward process) and regress the UNet's
prediction on the noise (or velocity): ``loss = instance loss + prior_loss_weight * prior loss + the method's extra
loss`` (``subjectgen_training.trainer.losses``; the method says how its instance term is averaged). Class prompts contain no trainable
token, so their text encodings are computed once. The optimizer uses the method's scaled rates (``Method.rates``).

The base model's family (``subjectgen_diffusers.families``) says everything that differs between bases: its text
encoders (the token gets new rows in each, and only those rows train), how prompts become the UNet's conditioning
(with any added conditioning, such as a pooled text embedding and size/crop ids, computed as the family's pipeline
computes it for an image of the training resolution), which attention modules Custom Diffusion trains, and the
pipeline of validation images.

All per-batch randomness comes from a generator seeded by ``(seed, batch, process)``: a resumed run draws exactly
what an uninterrupted one would. With ``gradient_accumulation_steps`` N, accelerate's ``accumulate`` adds the
gradients of N batches (each loss divided by N) before one optimizer step; ``steps`` counts optimizer steps, and
checkpoints fall only between them. Everything built before the first step (accelerator, token rows, cached latents,
optimizer) comes from :mod:`subjectgen_training.trainer.setup`. Several processes (``accelerate launch`` / ``torchrun``) average the gradients
of the few trainable tensors; only the main process writes files.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import torch

from subjectgen_diffusers.atomic_io import atomic_write_json
from subjectgen_training.trainer import outputs as train_outputs
from subjectgen_training.cpu_kernels import small_map_convolutions
from subjectgen_training.methods import build_method
from subjectgen_training.models.text_features import cast_conditioning, concat_conditioning, tokenize
from subjectgen_training.trainer import setup
from subjectgen_training.trainer.losses import instance_loss, prior_loss
from subjectgen_training.trainer.config import CONFIG_FILE_NAME, TrainConfig
from subjectgen_training.trainer.inputs import check_inputs

logger = logging.getLogger(__name__)
SUMMARY_FILE = "train_summary.json"
PHOTO_LOSS_TIMESTEPS = (100, 300, 500, 700, 900)


def step_generator(seed: int, step: int, process: int) -> tuple[torch.Generator, random.Random]:
    """The RNGs of one step of one process, independent of how the run got there (resume-safe)."""
    value = (seed * 1_000_003 + step * 7_919 + process * 104_729) % (2**63 - 1)
    return torch.Generator().manual_seed(value), random.Random(value)


class Trainer:
    """Builds the models, caches and optimizer for one resolved config; ``run()`` trains and saves the subject."""

    def __init__(self, config: TrainConfig, on_step=None, parts=None):
        """``parts``: already-built :class:`subjectgen_training.models.model_parts.ModelParts` (benchmarks,
        experiments); by default the model is loaded from ``config.base`` after every input check has passed."""
        from subjectgen_training.models.model_parts import load_model_parts, load_tokenizers

        self.config = config = config.resolved().sized()
        self.out = Path(config.out)
        self.on_step = on_step
        self.method = build_method(config)
        self.data = check_inputs(config, self.method)
        family, tokenizers = ((parts.family, parts.tokenizers) if parts is not None
                              else load_tokenizers(config.base, config.revision))
        self.encoder_token_groups = setup.add_person_tokens(config, family, tokenizers)
        self.token_groups = next(iter(self.encoder_token_groups.values()))  # the first encoder's
        self.token_ids = [token_id for group in self.token_groups for token_id in group]
        self.accelerator = setup.build_accelerator(config, self.out)
        self.device = self.accelerator.device
        self.rates = self.method.rates(config, self.accelerator.num_processes)  # the method it holds: its rule
        self.parts = parts if parts is not None else load_model_parts(config.base, family, tokenizers, config.revision)
        self.weight_dtype = setup.weight_dtype_of(config.mixed_precision)
        self.token_rows = setup.prepare_models(config, self.parts, self.method, self.encoder_token_groups, self.device)
        self.rows = next(iter(self.token_rows.values()))  # the first encoder's (the only one on SD 1.x)
        caches = setup.build_caches(config, self.parts, self.data, self.encode_text,
                                    progress=self.accelerator.is_local_main_process)
        self.captions_by_person, self.instance, self.sampleable = caches.captions_by_person, caches.instance, caches.sampleable
        self.reg, self.reg_captions, self.class_states = caches.reg, caches.reg_captions, caches.class_states
        self.optimizer = setup.build_optimizer(config, self.accelerator, self.token_rows, self.method, self.rates)
        self.conv_kernels = small_map_convolutions(self.device)  # one per run: Winograd's workspace is kept

    def trainable_tensors(self) -> dict[str, torch.Tensor]:
        """By a stable name (checkpoints): ``token_rows`` (the first encoder's), ``token_rows.<encoder>`` for the
        others, then the method's weights."""
        rows = {("token_rows" if i == 0 else f"token_rows.{name}"): r.rows for i, (name, r) in enumerate(self.token_rows.items())}
        return {**rows, **self.method.weight_parameters()}

    # -- one step ----------------------------------------------------------------------------------------------
    def autocast(self):
        """accelerate's autocast; it has none for fp16 on a CPU, where torch's CPU autocast runs the fp16 forward
        (the frozen weights were cast to float16 above, so without it the first matmul meets two dtypes)."""
        if self.weight_dtype == torch.float16 and not self.accelerator.native_amp:
            return torch.autocast(self.device.type, dtype=torch.float16)
        return self.accelerator.autocast()

    def encode_text(self, prompts: list[str], grad: bool):
        """The UNet conditioning of ``prompts`` as the family's pipeline computes it when sampling a ``resolution``
        sized image: original size = target size = the training resolution, crop (0, 0) (families without size
        conditioning ignore them)."""
        parts, size = self.parts, (self.config.resolution, self.config.resolution)
        ids = [tokenize(tokenizer, prompts).to(self.device) for _, tokenizer, _ in parts.slots()]
        with torch.set_grad_enabled(grad), self.autocast():
            return parts.family.unet_conditioning(parts, ids, original_size=size, crop=(0, 0), target_size=size)

    def predict(self, latents, states, generator, timesteps=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prediction, target)`` of the UNet at random (or given) timesteps; ``states``: the family's conditioning."""
        scheduler = self.parts.noise_scheduler
        noise = torch.randn(latents.shape, generator=generator).to(self.device)
        if timesteps is None:
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
        timesteps = timesteps.to(self.device)
        latents = latents.to(self.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        with self.autocast(), self.conv_kernels:  # CPU kernel choice only (cpu_kernels)
            states = cast_conditioning(states, self.weight_dtype)
            prediction = self.parts.unet(noisy.to(self.weight_dtype), timesteps, **states.unet_kwargs()).sample
        return prediction, target

    def step_loss(self, step: int) -> tuple[torch.Tensor, dict]:
        config = self.config
        generator, rng = step_generator(config.seed, step, self.accelerator.process_index)
        views = self._draw_views(generator, rng)
        index = torch.tensor(views)
        latents = self.instance.sample(index, generator)
        weight = self.instance.weight[index]
        captions = [self._captions_of(i).caption(rng, self.instance.prefix[i],
                                                  self.data.photos[self.instance.source[i]].caption) for i in views]
        states = self.encode_text(captions, grad=True)
        if self.reg is not None:
            reg_index = torch.randint(0, len(self.reg), (config.batch_size,), generator=generator)
            latents = torch.cat([latents, self.reg.sample(reg_index, generator)])
            weight = torch.cat([weight, self.reg.weight[reg_index]])
            states = concat_conditioning([states, *(self.class_states[self.reg_captions[i]] for i in reg_index.tolist())])
        prediction, target = self.predict(latents, states, generator)
        n = config.batch_size
        instance = instance_loss(prediction[:n], target[:n], weight[:n].to(self.device),
                                 self.method.instance_loss_mean).mean()
        loss = instance
        logs = {"loss": float(instance.detach())}
        if self.reg is not None:
            prior = prior_loss(prediction[n:], target[n:])
            loss = loss + config.prior_loss_weight * prior
            logs["prior"] = float(prior.detach())
        extras = [e for e in (self.method.extra_loss(r.rows, name) for name, r in self.token_rows.items()) if e is not None]
        if extras:
            extra = torch.stack(extras).sum()
            loss = loss + extra
            logs["reg"] = float(extra.detach())
        return loss, logs

    def _captions_of(self, view: int):
        """The caption maker of the person a cached view shows."""
        return self.captions_by_person[self.data.photo_subject[self.instance.source[view]]]

    def _draw_photo(self, rng: random.Random) -> int:
        """A random photo; in a joint run a random person first, so each person gets an equal share of the steps."""
        if len(self.captions_by_person) == 1:
            return rng.randrange(len(self.data.photos))
        person = rng.randrange(len(self.captions_by_person))
        return rng.choice([i for i, p in enumerate(self.data.photo_subject) if p == person])

    def _draw_views(self, generator: torch.Generator, rng: random.Random) -> list[int]:
        """``batch_size`` cached views: a random photo, flipped with ``flip_p``, a random rescale variant."""
        chosen = []
        for _ in range(self.config.batch_size):
            photo = self._draw_photo(rng)
            flip = rng.random() < self.config.flip_p
            options = [i for i in self.sampleable if self.instance.source[i] == photo and self.instance.flipped[i] == flip]
            chosen.append(rng.choice(options))
        return chosen

    @torch.no_grad()
    def photo_loss(self) -> float:
        """Denoising loss on the plain photos at fixed timesteps and noise, with the plain prompt (a progress gauge)."""
        generator = torch.Generator().manual_seed(self.config.seed)
        views = [i for i in range(len(self.instance)) if self.instance.plain[i] and not self.instance.flipped[i]]
        total = 0.0
        states = self.encode_text([self._captions_of(i).plain() for i in views], grad=False)
        index = torch.tensor(views)
        latents = self.instance.mean[index]
        ones = torch.ones_like(self.instance.weight[index]).to(self.device)
        for t in PHOTO_LOSS_TIMESTEPS:
            timesteps = torch.full((len(views),), t, dtype=torch.long)
            prediction, target = self.predict(latents, states, generator, timesteps)
            total += float(instance_loss(prediction, target, ones, self.method.instance_loss_mean).mean())
        return total / len(PHOTO_LOSS_TIMESTEPS)

    # -- the loop ----------------------------------------------------------------------------------------------
    def _average_gradients(self, params: list[torch.Tensor]) -> None:
        if self.accelerator.num_processes == 1:
            return
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            param.grad = self.accelerator.reduce(param.grad, reduction="mean")

    def _replicas_in_sync(self, params: list[torch.Tensor]) -> bool:
        """Every process must end with the same trained tensors (each saw different photos; gradients averaged)."""
        if self.accelerator.num_processes == 1:
            return True
        checksum = torch.stack([torch.cat([p.detach().float().flatten() for p in params]).double().sum()]).to(self.device)
        gathered = self.accelerator.gather(checksum)
        if not torch.allclose(gathered, gathered[:1].expand_as(gathered), rtol=1e-6, atol=1e-6):
            raise RuntimeError(f"trained tensors differ between processes: checksums {gathered.tolist()}")
        return True

    def optimizer_step(self, step: int, params: list[torch.Tensor]) -> dict:
        """One optimizer step: ``gradient_accumulation_steps`` batches through accelerate's ``accumulate`` (which
        scales each loss by 1/N and lets the optimizer step only on the last); returns the batches' mean logs."""
        accelerator, accumulation = self.accelerator, self.config.gradient_accumulation_steps
        total: dict = {}
        for batch in range(step * accumulation, (step + 1) * accumulation):
            with accelerator.accumulate():
                loss, logs = self.step_loss(batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    self._average_gradients(params)
                    if self.config.max_grad_norm:
                        accelerator.clip_grad_norm_(params, self.config.max_grad_norm)
                self.optimizer.step()  # accelerate's optimizer skips the step until the last batch
                self.optimizer.zero_grad(set_to_none=True)
            for key, value in logs.items():
                total[key] = total.get(key, 0.0) + value / accumulation
        return total

    def run(self) -> Path:
        from tqdm.auto import tqdm

        from subjectgen_training.trainer.checkpoints import checkpoint_dir, drop_checkpoints, list_checkpoints, load_checkpoint, save_checkpoint

        config, accelerator = self.config, self.accelerator
        tensors = self.trainable_tensors()
        params = list(tensors.values())
        start = 0
        if config.resume:
            found = list_checkpoints(self.out)
            if found:
                start = load_checkpoint(found[-1], tensors, self.optimizer)
                logger.info("resuming from %s (step %d)", found[-1], start)
            else:  # the normal case of a resumable job's first run (the CLI tells a user who typed --resume)
                logger.debug("no checkpoint in %s; starting from step 0", checkpoint_dir(self.out))
        accelerator.print(setup.format_rates(config, self.rates, accelerator.num_processes))
        if accelerator.is_main_process:
            atomic_write_json(self.out / CONFIG_FILE_NAME, self.recorded_config())
            if config.log_with:
                accelerator.init_trackers("subjectgen", config={k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))})
        initial_loss = self.photo_loss()
        bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc=f"train {config.method}",
                   disable=not accelerator.is_local_main_process)
        began = time.perf_counter()
        logs: dict = {}
        for step in bar:
            logs = self.optimizer_step(step, params)
            done = step + 1
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
            if config.log_with:
                accelerator.log(logs, step=done)
            if accelerator.is_main_process:
                if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
                    save_checkpoint(self.out, done, tensors, self.optimizer, config.checkpoints_total_limit)
                if config.validation_every and done % config.validation_every == 0:
                    self.save_validation_image(done)
            if self.on_step is not None:
                self.on_step(done, logs)
        seconds = time.perf_counter() - began
        accelerator.wait_for_everyone()
        in_sync = self._replicas_in_sync(params)
        final_loss = self.photo_loss()
        if accelerator.is_main_process:
            self.save_subject()
            atomic_write_json(self.out / SUMMARY_FILE, {
                "method": config.method, "steps": config.steps, "resumed_from": start,
                "world_size": accelerator.num_processes, "replicas_in_sync": in_sync, "initial_photo_loss": initial_loss,
                "final_photo_loss": final_loss, "last_logs": logs, "train_seconds": seconds,
                "seconds_per_step": seconds / max(1, config.steps - start),
            })
        accelerator.end_training()
        if accelerator.is_main_process and not config.keep_checkpoints:
            drop_checkpoints(self.out)  # the subject is complete: the resumable state is no longer needed
        return self.out

    # -- outputs -----------------------------------------------------------------------------------------------
    def recorded_config(self) -> dict:
        return train_outputs.recorded_config(self)

    def build_subject(self):
        return train_outputs.build_subject(self)

    def save_subject(self) -> Path:
        return train_outputs.save_subject(self)

    def save_validation_image(self, step: int) -> Path:
        return train_outputs.save_validation_image(self, step)


def train(config: TrainConfig, *, on_step=None) -> Path:
    """Train a subject as ``config`` says and return its folder (loadable by ``load_subject``).

    The main process holds ``<out>/train.lock`` (``subjectgen_training.trainer.run_lock``) from before the model loads to the end, so
    a second run into the same folder refuses at once instead of writing over the first."""
    import os

    from subjectgen_training.trainer.checkpoints import check_stopped_run
    from subjectgen_training.trainer.run_lock import check_output_folder, output_lock

    check_output_folder(Path(config.out))
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun / accelerate launch: the main process holds the lock
        return Trainer(config, on_step=on_step).run()
    with output_lock(config.out):
        check_stopped_run(Path(config.out), resume=config.resume, restart=config.restart)  # before the model loads
        return Trainer(config, on_step=on_step).run()
