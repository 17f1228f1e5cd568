"""Torch CPU threads on an idle and on a busy machine: toy image generation and toy training steps.

Each configuration runs in a fresh process, because OpenMP reads ``OMP_NUM_THREADS`` and ``OMP_WAIT_POLICY`` once,
when torch loads. The grid is threads (1, 2, ...) x OpenMP wait policy (``default``: unset, libgomp spins at every
barrier before it sleeps; ``passive``: waiting threads sleep at once) x load (``idle``, or ``busy``: this script
starts ``--busy-jobs`` processes that spin ``while True: pass`` beside the measured one). Workloads use the shipped
toy base model (``training/toy/weights/toy-base``, 32 px):

* ``generate``: one 20-step DDIM image per call (the pipeline built once, one warm-up image first);
* ``train``: one Custom-Diffusion-like step per call (UNet forward and backward at batch 4, AdamW on the
  cross-attention K/V weights).

Every configuration is measured ``--repeats`` times (interleaved, so a neighbour's load spreads over all of them) and
the median of the per-call medians is printed as a Markdown table, plus JSON with ``--json``.

    python -m subjectgen_training.benchmarks.threads_bench --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

TOY_BASE = Path(__file__).resolve().parents[1] / "toy" / "weights" / "toy-base"
BUSY_LOOP = "while True: pass"


def _generate_calls(calls: int) -> list[float]:
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(TOY_BASE, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    times = []
    for call in range(calls + 1):  # the first call warms up
        start = time.perf_counter()
        pipe("a cartoon face, on a red background", num_inference_steps=20,
             generator=torch.Generator().manual_seed(call))
        times.append(time.perf_counter() - start)
    return times[1:]


def _train_calls(calls: int) -> list[float]:
    import torch
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(TOY_BASE, subfolder="unet")
    unet.requires_grad_(False)
    params = [p for name, p in unet.named_parameters() if "attn2.to_k" in name or "attn2.to_v" in name]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    size = unet.config.sample_size
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(4, unet.config.in_channels, size, size, generator=generator)
    text = torch.randn(4, 77, unet.config.cross_attention_dim, generator=generator)
    times = []
    for call in range(calls + 1):
        start = time.perf_counter()
        timesteps = torch.randint(0, 1000, (4,), generator=generator)
        prediction = unet(latents, timesteps, text).sample
        loss = torch.nn.functional.mse_loss(prediction, torch.zeros_like(prediction))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times[1:]


def child(workload: str, calls: int) -> None:
    """Run in the measured process: torch threads come from the environment the parent set."""
    import torch

    times = {"generate": _generate_calls, "train": _train_calls}[workload](calls)
    print(json.dumps({"threads": torch.get_num_threads(), "median_s": statistics.median(times), "times": times}))


def measure(workload: str, threads: int, policy: str, calls: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("OMP_WAIT_POLICY", None)
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy.upper()
    env["SUBJECTGEN_THREADS"] = str(threads)
    out = subprocess.run([sys.executable, "-m", "subjectgen_training.benchmarks.threads_bench", "--child", workload,
                          "--calls", str(calls)], env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["threads"] == threads, result
    return result["median_s"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", default=["generate", "train"], choices=["generate", "train"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--policies", nargs="+", default=["default", "passive"], choices=["default", "passive", "active"])
    parser.add_argument("--loads", nargs="+", default=["idle", "busy"], choices=["idle", "busy"])
    parser.add_argument("--busy-jobs", type=int, default=1, help="CPU-bound processes started for the busy load")
    parser.add_argument("--calls", type=int, default=5, help="timed calls per process (after one warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="processes per configuration; the median is reported")
    parser.add_argument("--json", type=Path, default=None, help="also write every measurement here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.calls)
        return 0

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the busy processes on a kill
    results: dict[tuple, list[float]] = {}
    for load in args.loads:
        busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(args.busy_jobs if load == "busy" else 0)]
        try:
            for _ in range(args.repeats):
                for workload in args.workloads:
                    for threads in args.threads:
                        for policy in args.policies:
                            key = (workload, load, threads, policy)
                            results.setdefault(key, []).append(measure(workload, threads, policy, args.calls))
                            print(f"{key}: {results[key][-1] * 1000:.0f} ms", file=sys.stderr, flush=True)
        finally:
            for process in busy:
                process.kill()
                process.wait()

    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
          f"busy = {args.busy_jobs} extra spinning process(es); median of {args.repeats} processes x {args.calls} calls")
    print("\n| workload | load | threads | OMP_WAIT_POLICY | median per call | runs |")
    print("| --- | --- | ---: | --- | ---: | --- |")
    for (workload, load, threads, policy), times in results.items():
        runs = ", ".join(f"{t * 1000:.0f}" for t in times)
        print(f"| {workload} | {load} | {threads} | {policy} | {statistics.median(times) * 1000:.0f} ms | {runs} |")
    if args.json:
        args.json.write_text(json.dumps([{"workload": k[0], "load": k[1], "threads": k[2], "policy": k[3], "seconds": v}
                                         for k, v in results.items()], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
