"""Training step time and peak memory: our trainer against the naive loop of diffusers' example scripts.

The naive loop (what ``train_custom_diffusion.py`` / ``textual_inversion.py`` do every step): VAE-encode the pixel
batch (photos and class images), text-encode every prompt (class prompts included), optimise the whole token
embedding matrix with AdamW and zero the other rows' gradients. Ours: latents encoded once (flips and rescale
variants included), class-prompt encodings cached, only the new rows as parameters, and on a CPU our kernels for
the frozen UNet's 3x3 convolutions -- Winograd F(2x2, 3x3) on 16x16 to 64x64 maps, one matrix product over the batch
on smaller ones (``subjectgen_training.cpu_kernels``; the naive loop keeps PyTorch's default kernels, as the examples
do). Same UNet (SDPA, Custom Diffusion processors), same batch (1 photo + 1 class
image), same method and resolution.

Each row holds the median and minimum step in wall-clock seconds (``seconds_per_step``) and in the process's CPU
seconds (``cpu_seconds_per_step``; one torch thread, so that is the step's own work: on a shared machine other jobs
stretch the wall time of whichever loop they overlap, not its CPU time), and the load average when it finished.

Models: ``tiny`` (training/models/tiny_models.py), ``sd15`` (Stable Diffusion 1.5's real shapes with random weights,
built offline from configs: UNet 860 M, VAE 84 M, text encoder 123 M parameters) or ``sdxl`` (SDXL base 1.0's real
shapes, likewise: UNet 2.57 B, VAE 84 M, CLIP-L 123 M and OpenCLIP-bigG 695 M parameters; ~14 GB in float32, so run
it under ``flock /tmp/subjectgen-bigmem.lock`` on a shared machine).

    python -m subjectgen_training.benchmarks.train_bench --model tiny --resolutions 64 128 256 --steps 10
    python -m subjectgen_training.benchmarks.train_bench --model sd15 --resolutions 256 --methods cd --steps 3
    python -m subjectgen_training.benchmarks.train_bench --model sd15 --resolutions 256 --methods cd --steps 3 --check
    python -m subjectgen_training.benchmarks.train_bench --model sdxl --resolutions 128 --methods cr --steps 2

Every measurement runs in its own process so the peak RSS (``ru_maxrss``) belongs to that configuration alone.
``--broadcast-weights`` replaces every frozen weight by one random value broadcast to its shape (zero strides, 4
bytes): the shapes, operations and activations are the real ones while SDXL's 14 GB of weights are not held (each
operation copies its weight transiently, so steps are slower) -- for measuring activations on a small machine.
``live_peak_gb`` is the largest amount of memory held by allocations (glibc ``mallinfo2``, sampled after every torch
operation of the measured steps: a CPU counterpart of ``torch.cuda.max_memory_allocated``) and ``live_start_gb`` what
was held before the first measured step (weights, caches, optimizer state); their difference is what one step adds
(activations, gradients, temporaries).

``--check`` (for people to run, never a timed CI test) compares each measured ratio ours/naive with the goal
(:data:`GOALS`) and with the last recorded results (``train_bench_<model>.json`` beside this module, the raw rows of
``train_bench_results.md``), says which is off, and exits 1 when one is. ``--results FILE`` checks rows already
measured (a file ``--out`` wrote) instead of measuring again. The ratio, not the absolute time, is compared: both loops
run on the same machine in the same run, so a loaded machine slows both. ``--clock cpu`` compares the CPU-time ratio
instead (against recorded rows that have it): the steadier figure when other jobs share the cores. Even alone on the
machine one process's speed can differ from the next one's by 10-15 % (the host's clock and memory bandwidth move);
``--pairs N`` measures each configuration N times, naive then ours, and the check takes the median of the N ratios.

``--memory`` adds, for our trainer, the peak bytes of live tensors in one training step (forward, backward, clipping,
optimizer step; the AdamW moments made beforehand, as in a long run), with and without gradient checkpointing
(``--checkpointing both``). It is counted by torch's ``MemTracker`` (``torch.distributed._tools.mem_tracker``), a
``TorchDispatchMode`` that sees every tensor an operator creates and follows its storage until it is freed, grouped
as parameters, buffers, gradients, activations, temporaries and optimizer states; the UNet, the text encoder, the
trainable tensors and the optimizer are registered before the step. The VAE is not counted: it encodes the photos
once and leaves the device before training. On a CPU these are the bytes a GPU allocator would be asked for, without
its block rounding, the CUDA context or kernels' workspaces. The seed's step (SD 1.5 shapes, 512 px, 2 photos + 2
class images, cd+cr; under ``flock /tmp/subjectgen-bigmem.lock``: it needs several GB)::

    python -m subjectgen_training.benchmarks.train_bench --model sd15 --resolutions 512 --methods cd+cr \
        --batch-size 2 --memory --checkpointing both --mixed-precision bf16 --steps 1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from subjectgen_training.benchmarks.bench_check import (  # noqa: F401 - the check's names, re-exported
    CLOCKS,
    DEFAULT_TOLERANCE,
    GOALS,
    check_ratios,
    ratios,
    recorded_results,
)
from subjectgen_training.benchmarks.bench_memory import LivePeak, live_bytes, memory_tracker
from subjectgen_training.benchmarks.bench_models import build_modules, make_folders


def config_for(method: str, resolution: int, steps: int, photos: Path, reg: Path, out: Path, **extra):
    """The benchmark's training config; ``extra`` holds further TrainConfig fields (batch_size, cd_scope, ...)."""
    from subjectgen_training.trainer.config import TrainConfig

    return TrainConfig.from_dict({"base": "benchmark", "photos": str(photos), "reg_dir": str(reg), "method": method,
                                  "out": str(out), "resolution": resolution, "batch_size": 1, "steps": steps,
                                  "use_8bit_adam": False, **extra})


def train_step(trainer, step: int, params: list[torch.Tensor]) -> None:
    """One plain step of our trainer: loss, backward, clipping, AdamW."""
    loss, _ = trainer.step_loss(step)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def measure_memory(trainer) -> dict:
    """Peak bytes of live tensors in one step, by kind (see the module docstring). The AdamW moments are made first
    by a step on zero gradients (as after any real step; no forward pass needed), so they count as in a long run."""
    params = list(trainer.trainable_tensors().values())
    for param in params:
        param.grad = torch.zeros_like(param)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.conv_kernels = nullcontext()  # the CPU's own convolution kernels and workspace: a GPU runs cuDNN's
    tracker = memory_tracker()
    tracker.track_external(trainer.parts.unet, *trainer.parts.text_encoders.values(), trainer.optimizer, *params)
    with tracker:
        train_step(trainer, 1, params)
    peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    return {str(getattr(kind, "value", kind)): int(size) for kind, size in peak.items()}


def measure_ours(trainer, steps: int) -> tuple[list[tuple[float, float]], dict]:
    """``(wall, CPU)`` seconds of timed steps after a warm-up step, then one more step under :class:`LivePeak` (its
    sampling is slow, so it is never timed)."""
    params = list(trainer.trainable_tensors().values())

    def one_step(step: int) -> tuple[float, float]:
        began, cpu = time.perf_counter(), time.process_time()
        train_step(trainer, step, params)
        return time.perf_counter() - began, time.process_time() - cpu

    times = [one_step(step) for step in range(steps + 1)]  # the first step warms up allocators, creates Adam's state
    memory = {"live_start_gb": live_bytes() / 1024**3}
    with LivePeak() as tracker:
        one_step(steps + 1)
    memory["live_peak_gb"] = tracker.peak / 1024**3
    return times[1:], memory


def measure_naive(trainer, steps: int) -> tuple[list[tuple[float, float]], dict]:
    """The example scripts' step on the same modules: encode everything every step, whole embedding matrices trained."""
    import random

    from subjectgen_training.data.latent_cache import rescale, square_resize, to_tensor
    from subjectgen_training.models.text_features import tokenize
    from subjectgen_training.models.token_rows import prompt_with_token

    config, parts = trainer.config, trainer.parts
    vae, unet = parts.vae.to(trainer.device), parts.unet
    # Undo our splice: the example optimises each encoder's full (resized) embedding matrix.
    embeddings, new_ids = {}, {}
    for name, rows in trainer.token_rows.items():
        text_encoder = parts.text_encoders[name]
        text_encoder.set_input_embeddings(rows.base)
        embedding = text_encoder.get_input_embeddings().weight
        new_ids[name] = [i for group in trainer.encoder_token_groups[name] for i in group]
        with torch.no_grad():
            embedding[new_ids[name]] = rows.rows.detach().to(embedding.dtype)
        embedding.requires_grad_(True)
        embeddings[name] = embedding
    params = list(embeddings.values()) + [p for p in trainer.method.weight_parameters().values()]
    optimizer = torch.optim.AdamW(params, lr=config.lr or config.token_lr, weight_decay=config.adam_weight_decay)
    photos, regs = trainer.data.photos, trainer.data.reg_photos
    instance_prompt = prompt_with_token(config.prompt, config.token, config.num_vectors)
    keep = {}
    for name, embedding in embeddings.items():
        keep[name] = torch.ones(embedding.shape[0], dtype=torch.bool)
        keep[name][new_ids[name]] = False
    scheduler = parts.noise_scheduler
    size = (config.resolution, config.resolution)
    times = []
    for step in range(steps + 1):
        began, cpu = time.perf_counter(), time.process_time()
        # Per-step pixel work as the example's dataset does (rescale/flip), then the VAE on photo + class image.
        rng = random.Random(step)
        pixels = to_tensor(square_resize(photos[step % len(photos)].image, config.resolution))
        pixels = pixels.flip(-1) if rng.random() < config.flip_p else pixels
        mask = torch.ones(1, config.resolution, config.resolution)
        if config.random_rescale:
            pixels, mask, _, _ = rescale(pixels, mask, config.resolution, rng)
        reg_pixels = to_tensor(square_resize(regs[step % len(regs)].image, config.resolution))[None]
        batch = torch.cat([pixels[None], reg_pixels]).to(trainer.device)
        with torch.no_grad():
            latents = vae.encode(batch).latent_dist.sample() * vae.config.scaling_factor
        ids = [tokenize(tokenizer, [instance_prompt, config.class_prompt]).to(trainer.device)
               for _, tokenizer, _ in parts.slots()]
        states = parts.family.unet_conditioning(parts, ids, original_size=size, target_size=size)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (2,), device=latents.device)
        prediction = unet(scheduler.add_noise(latents, noise, timesteps), timesteps, **states.unet_kwargs()).sample
        mask = torch.nn.functional.interpolate(mask[None], size=latents.shape[-2:]).to(latents.device)
        instance = (((prediction[:1] - noise[:1]) ** 2) * mask).sum() / (mask.sum() * 4)
        loss = instance + config.prior_loss_weight * torch.nn.functional.mse_loss(prediction[1:], noise[1:])
        for name, embedding in embeddings.items():
            extra = trainer.method.extra_loss(embedding[new_ids[name]], name)
            if extra is not None:
                loss = loss + extra
        loss.backward()
        for name, embedding in embeddings.items():
            embedding.grad[keep[name]] = 0  # the example's way of "training only the new rows"
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append((time.perf_counter() - began, time.process_time() - cpu))
    return times[1:], {}


# (model, method) -> the most ours/naive may be (issue 29: at SD 1.5's shapes our Custom Diffusion step costs at most
# half the example loop's).
def run_one(model: str, method: str, resolution: int, implementation: str, steps: int, threads: int,
            extra: dict | None = None, broadcast: bool = False) -> dict:
    from subjectgen_training.models.model_parts import parts_from_modules
    from subjectgen_training.trainer.loop import Trainer

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        photos, reg = make_folders(Path(tmp))
        parts = parts_from_modules(*build_modules(model, broadcast))
        trainer = Trainer(config_for(method, resolution, steps, photos, reg, Path(tmp) / "out", **(extra or {})),
                          parts=parts)
        if implementation == "memory":
            began, cpu = time.perf_counter(), time.process_time()
            memory = {"peak_live_tensor_bytes": measure_memory(trainer)}
            times = [(time.perf_counter() - began, time.process_time() - cpu)]
        else:
            times, memory = (measure_ours if implementation == "ours" else measure_naive)(trainer, steps)
    wall, cpu = sorted(t[0] for t in times), sorted(t[1] for t in times)
    return {
        "model": model, "method": method, "resolution": resolution, "implementation": implementation,
        "steps": steps, "threads": threads, "seconds_per_step": wall[len(wall) // 2], "min_seconds_per_step": wall[0],
        "cpu_seconds_per_step": cpu[len(cpu) // 2], "min_cpu_seconds_per_step": cpu[0],
        "load_average": list(os.getloadavg()),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, **(extra or {}), **memory,
        **({"broadcast_weights": True} if broadcast else {}),
    }


def extra_fields(args, checkpointing: bool) -> dict:
    """The TrainConfig fields the flags set beyond the benchmark's defaults."""
    return {"batch_size": args.batch_size, "mixed_precision": args.mixed_precision,
            "gradient_checkpointing": checkpointing, **({"cd_scope": args.cd_scope} if args.cd_scope else {})}


def _subprocess(args, method: str, resolution: int, implementation: str, checkpointing: bool | None = None) -> dict:
    checkpointing = args.checkpointing == "on" if checkpointing is None else checkpointing
    command = [sys.executable, "-m", "subjectgen_training.benchmarks.train_bench", "--model", args.model,
               "--steps", str(args.steps), "--threads", str(args.threads), "--batch-size", str(args.batch_size),
               "--mixed-precision", args.mixed_precision, "--checkpointing", "on" if checkpointing else "off",
               *(["--cd-scope", args.cd_scope] if args.cd_scope else []),
               *(["--broadcast-weights"] if args.broadcast_weights else []),
               "--one", f"{method}/{resolution}", implementation]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def memory_rows(args) -> list[dict]:
    """``--memory``: one fresh process per configuration and checkpointing setting; prints the peaks in GiB."""
    rows = []
    settings = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    for resolution in args.resolutions:
        for method in args.methods:
            for checkpointing in settings:
                row = _subprocess(args, method, resolution, "memory", checkpointing)
                rows.append(row)
                peak = row["peak_live_tensor_bytes"]
                kinds = ", ".join(f"{kind} {size / 2**30:.2f}" for kind, size in peak.items() if kind != "Total")
                print(f"{args.model:5s} {resolution:4d}px {method:6s} batch {args.batch_size}+{args.batch_size} "
                      f"{args.mixed_precision:4s} checkpointing {'on ' if checkpointing else 'off'}: peak live tensors "
                      f"{peak['Total'] / 2**30:.2f} GiB ({kinds}); peak RSS {row['peak_rss_gb']:.2f} GB; "
                      f"{row['seconds_per_step']:.1f} s/step", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["tiny", "sd15", "sdxl"], default="tiny")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--methods", nargs="+", default=["cd", "cr", "cd+cr"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps timings stable on a shared CPU)")
    parser.add_argument("--batch-size", type=int, default=1, help="photos per step (plus as many class images)")
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no",
                        help="the trainer's autocast dtype (on a CPU bf16 stands in for fp16: the same bytes)")
    parser.add_argument("--memory", action="store_true",
                        help="measure the peak bytes of live tensors in one step of our trainer instead of the timing")
    parser.add_argument("--checkpointing", choices=("off", "on", "both"), default="off",
                        help="gradient checkpointing of the UNet and text encoder")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--check", action="store_true", help="compare the ratios with the goal and the recorded "
                        "results; exit 1 when one is off")
    parser.add_argument("--results", help="with --check: check these rows (a file --out wrote) instead of measuring")
    parser.add_argument("--recorded", help="with --check: the recorded rows to compare with (default: "
                        "train_bench_<model>.json beside this module)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="with --check: compare wall-clock step times, or the process's CPU time per step (steadier "
                        "on a shared machine: another job's share of the cores does not count)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="with --check: how far above the recorded ratio counts as slower (0.15 = 15%%)")
    parser.add_argument("--cd-scope", choices=["kv", "kv+q+out"], help="Custom Diffusion's scope (default: the recipe's)")
    parser.add_argument("--implementations", nargs="+", default=["naive", "ours"], choices=["naive", "ours"])
    parser.add_argument("--pairs", type=int, default=1,
                        help="measure each configuration this many times, naive then ours; --check takes the median "
                        "ratio (one process's speed can swing by 10-15%% on a shared host)")
    parser.add_argument("--broadcast-weights", action="store_true", help="hold no real weights (module docstring)")
    parser.add_argument("--one", nargs=2, metavar=("METHOD/RES", "IMPLEMENTATION"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        method, resolution = args.one[0].rsplit("/", 1)
        print(json.dumps(run_one(args.model, method, int(resolution), args.one[1], args.steps, args.threads,
                                 extra_fields(args, args.checkpointing == "on"), args.broadcast_weights)))
        return 0
    if args.pairs < 1:
        parser.error(f"--pairs must be at least 1, got {args.pairs}")
    if args.results and not args.check:
        parser.error("--results needs --check")
    if args.results and not Path(args.results).is_file():
        parser.error(f"--results: no file {args.results}; pass a JSON file that --out wrote")
    if args.results:
        rows = json.loads(Path(args.results).read_text())
    else:
        rows = memory_rows(args) if args.memory else measure(args)
    if args.out and not args.results:
        from subjectgen_diffusers.atomic_io import atomic_write_json

        atomic_write_json(args.out, rows)
    if not args.check:
        return 0
    recorded_path = Path(args.recorded) if args.recorded else recorded_results(args.model)
    recorded = ratios(json.loads(recorded_path.read_text()), args.clock) if recorded_path.is_file() else {}
    ok, lines = check_ratios(ratios(rows, args.clock), recorded, GOALS, args.tolerance)
    for line in lines:
        print(line)
    print(f"check: {'ok' if ok else 'OFF'} ({args.clock} time; recorded: {recorded_path.name if recorded else 'none'})")
    return 0 if ok else 1


def measure(args) -> list[dict]:
    """Each (resolution, method) in ``--pairs`` pairs of processes (naive, then ours; each row keeps its ``pair``);
    prints one line per pair."""
    rows = []
    for resolution in args.resolutions:
        for method in args.methods:
            for index in range(args.pairs):
                pair = {}
                for implementation in args.implementations:
                    pair[implementation] = dict(_subprocess(args, method, resolution, implementation), pair=index)
                    rows.append(pair[implementation])
                line = " | ".join(f"{name} {row['seconds_per_step'] * 1e3:8.1f} ms (CPU {row['cpu_seconds_per_step'] * 1e3:8.1f}) "
                                  f"{row['peak_rss_gb']:.2f} GB" for name, row in pair.items())
                if len(pair) == 2:
                    line += (f" | ratio {pair['ours']['seconds_per_step'] / pair['naive']['seconds_per_step']:.3f}"
                             f" (CPU {pair['ours']['cpu_seconds_per_step'] / pair['naive']['cpu_seconds_per_step']:.3f})")
                line += " | load {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
                label = f" #{index + 1}" if args.pairs > 1 else ""
                print(f"{args.model:5s} {resolution:4d}px {method:6s}{label} {line}", flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
