"""Peak memory of one SDXL training step, split into what is counted and what is measured.

Counted (exact, from SDXL base 1.0's configs on the meta device): the frozen weights, Custom Diffusion's trainable
deltas for a scope, their gradients and AdamW's two moments (8-bit AdamW: one byte each).

Measured: the memory one training step adds on top of everything held before it (activations saved for the
backward, gradients, temporaries), with gradient checkpointing on, on SDXL's real shapes. The frozen weights are
broadcast scalars (``bench_models.broadcast_weights``: real shapes and operations, no 14 GB of weights), the step is the
trainer's own text encoding (with grad, through the new token rows) and UNet prediction for a batch of 2 (photo +
class image, as with prior preservation), sampled after every operation with ``bench_memory.LivePeak``, in float32 on
the CPU, at several resolutions. The UNet's share grows with the latent pixels (with checkpointing nothing quadratic
is kept: attention is recomputed block by block), so ``a + b * pixels`` through the two largest resolutions
extrapolates to 1024 px.

    python -m subjectgen_training.benchmarks.sdxl_memory --resolutions 64 128 192
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

GIB = 1024**3


def counted(scope: str = "kv+q+out") -> dict:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from subjectgen_diffusers.families import get_family
    from subjectgen_diffusers.methods import CD_SCOPES
    from subjectgen_training.benchmarks.bench_models import clip_text_config, sdxl_unet_config

    with torch.device("meta"):
        unet = UNet2DConditionModel(**sdxl_unet_config())
        text = [CLIPTextModel(clip_text_config(768, 12, 12, "quick_gelu")),
                CLIPTextModelWithProjection(clip_text_config(1280, 32, 20, "gelu"))]
    modules = dict(unet.named_modules())
    layers = get_family("sdxl").cd_layers(unet)
    trained = 0
    for layer in layers:
        for proj in CD_SCOPES[scope]:
            linear = modules[f"{layer}.{proj}"]
            trained += linear.weight.numel() + (linear.bias.numel() if proj == "to_out.0" and linear.bias is not None else 0)
    return {"unet_params": sum(p.numel() for p in unet.parameters()),
            "text_params": sum(p.numel() for m in text for p in m.parameters()),
            "cd_layers": len(layers), "cd_scope": scope, "cd_trainable_params": trained}


def measure(resolutions: list[int]) -> list[dict]:
    from subjectgen_training.benchmarks.bench_memory import LivePeak, live_bytes
    from subjectgen_training.benchmarks.bench_models import build_modules, make_folders
    from subjectgen_training.benchmarks.train_bench import config_for
    from subjectgen_training.models.model_parts import parts_from_modules
    from subjectgen_training.models.token_rows import prompt_with_token
    from subjectgen_training.trainer.loop import Trainer

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        photos, reg = make_folders(Path(tmp))
        parts = parts_from_modules(*build_modules("sdxl", broadcast=True))
        trainer = Trainer(config_for("cr", 64, 1, photos, reg, Path(tmp) / "out", gradient_checkpointing=True),
                          parts=parts)
        config = trainer.config
        prompts = [prompt_with_token(config.prompt, config.token, config.num_vectors), config.class_prompt]
        for resolution in resolutions:
            generator = torch.Generator().manual_seed(0)
            latents = torch.randn(2, 4, resolution // 8, resolution // 8, generator=generator)
            start = live_bytes()
            began = time.perf_counter()
            with LivePeak() as tracker:
                states = trainer.encode_text(prompts, grad=True)
                prediction, target = trainer.predict(latents, states, generator)
                torch.nn.functional.mse_loss(prediction.float(), target.float()).backward()
            trainer.optimizer.zero_grad(set_to_none=True)
            row = {"resolution": resolution, "step_added_gib": (tracker.peak - start) / GIB,
                   "seconds": time.perf_counter() - began}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def estimate(count: dict, rows: list[dict], resolution: int = 1024) -> dict:
    """GiB at ``resolution``: fp16 frozen weights, fp32 deltas + grads, AdamW or 8-bit AdamW moments, activations
    extrapolated from the two largest measured resolutions (halved for fp16 as a lower bound, fp32 as measured)."""
    (r1, a1), (r2, a2) = [(r["resolution"], r["step_added_gib"]) for r in sorted(rows, key=lambda r: r["resolution"])[-2:]]
    slope = (a2 - a1) / (r2**2 - r1**2)
    fp32_activations = a2 + slope * (resolution**2 - r2**2)
    frozen = 2 * (count["unet_params"] + count["text_params"]) / GIB
    deltas = 4 * count["cd_trainable_params"] / GIB
    return {"resolution": resolution, "frozen_fp16_gib": frozen, "deltas_fp32_gib": deltas, "grads_fp32_gib": deltas,
            "adamw_gib": 2 * deltas, "adamw_8bit_gib": deltas / 2, "activations_fp32_gib": fp32_activations,
            "activations_half_gib": fp32_activations / 2,
            "total_adamw_gib": [frozen + 4 * deltas + fp32_activations / 2, frozen + 4 * deltas + fp32_activations],
            "total_8bit_gib": [frozen + 2.5 * deltas + fp32_activations / 2, frozen + 2.5 * deltas + fp32_activations]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128, 192])
    parser.add_argument("--scope", default="kv+q+out", choices=["kv", "kv+q+out"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    count = counted(args.scope)
    print(json.dumps(count), flush=True)
    rows = measure(args.resolutions)
    result = {"counted": count, "measured": rows, "estimate": estimate(count, rows)}
    print(json.dumps(result["estimate"], indent=1), flush=True)
    if args.out:
        from subjectgen_diffusers.atomic_io import atomic_write_json

        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
