"""Plug-in benchmark: subject file size for SD 1.5 shapes, subject load time, delta-processor overhead per UNet call.

    python -m subjectgen_training.benchmarks.plugin_bench                 # tiny model + SD 1.5 file sizes (seconds)
    python -m subjectgen_training.benchmarks.plugin_bench --sd15          # also SD 1.5-shaped UNet/CLIP-L with random weights
    python -m subjectgen_training.benchmarks.plugin_bench --sd15 --device cuda --dtype float16 --latent 64
    python -m subjectgen_training.benchmarks.plugin_bench --sd15 --load-only   # load/unload/swap times against LOAD_GOALS_MS

Overhead is the median UNet forward time with subjects' :class:`SubjectAttnProcessor` on the 16 cross-attention
layers (Custom Diffusion, Kumari et al. CVPR 2023: ``W + scale·ΔW`` for K/V, or Q/K/V/out) against diffusers' stock
``AttnProcessor2_0``. Random weights: the timings and sizes depend only on shapes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

SD15_UNET = dict(
    sample_size=64, cross_attention_dim=768, attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, layers_per_block=2,
)


def _subject_for(unet, text_width: int, scope: str, token: str = "<s1>"):
    from subjectgen_diffusers.subject_format import CD_SCOPES, Subject, SubjectConfig

    layers = sorted(n.removesuffix(".processor") for n in unet.attn_processors if n.endswith("attn2.processor"))
    deltas, bias = {}, {}
    for layer in layers:
        attn = unet.get_submodule(layer)
        deltas[layer] = {}
        for proj in CD_SCOPES[scope]:
            linear = attn.to_out[0] if proj == "to_out.0" else getattr(attn, proj)
            deltas[layer][proj] = torch.randn(tuple(linear.weight.shape)) * 1e-3
        if scope == "kv+q+out":
            bias[layer] = torch.randn(tuple(attn.to_out[0].bias.shape)) * 1e-3
    config = SubjectConfig(method="cd+cr", token=token, num_vectors=1, text_hidden_size=text_width,
                           cross_attention_dim=unet.config.cross_attention_dim, layers=layers, cd_scope=scope)
    return Subject(config, torch.randn(1, text_width) * 0.01, deltas, bias)


def sd15_file_sizes() -> dict:
    """Bytes of subject.safetensors for SD 1.5 (16 cross-attention layers, 768-d text), per scope and dtype."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
    sizes = {"num_cross_attention_layers": sum(n.endswith("attn2.processor") for n in unet.attn_processors)}
    with tempfile.TemporaryDirectory() as tmp:
        for scope in ("kv", "kv+q+out"):
            subject = _subject_for(unet, 768, scope)
            for dtype in (torch.float32, torch.float16):
                folder = subject.save(Path(tmp) / f"{scope}-{dtype}", dtype=dtype)
                sizes[f"{scope}/{str(dtype).removeprefix('torch.')}_MiB"] = round(
                    (folder / "subject.safetensors").stat().st_size / 2**20, 2)
            sizes[f"{scope}/rank4_float16_MiB"] = round(
                (subject.save(Path(tmp) / f"{scope}-r4", rank=4, dtype=torch.float16) / "subject.safetensors")
                .stat().st_size / 2**20, 3)
    return sizes


def processor_overhead(pipe, latent: int, batch: int, repeats: int, device: str, dtype: torch.dtype) -> dict:
    """Median UNet-call time, stock processors vs subjects (kv, two kv subjects, kv+q+out), rounds interleaved.

    Each round times every setup once (processors swapped with ``set_attn_processor`` outside the timed region), so
    load from other processes on a shared machine hits all setups alike.
    """
    from subjectgen_diffusers.attention import SubjectAttnProcessor

    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    pipe.unet.to(device, dtype)
    latents = torch.randn(batch, 4, latent, latent, device=device, dtype=dtype)
    context = torch.randn(batch, 77, pipe.unet.config.cross_attention_dim, device=device, dtype=dtype)
    stock = dict(pipe.unet.attn_processors)
    setups = {"stock": stock}
    for name, scopes in {"kv": ["kv"], "kv_two_subjects": ["kv", "kv"], "kv+q+out": ["kv+q+out"]}.items():
        processors = dict(stock)
        for index, scope in enumerate(scopes):
            subject = _subject_for(pipe.unet, width, scope, token=f"<s{index}>")
            for layer, weights in subject.deltas.items():
                key = f"{layer}.processor"
                if not isinstance(processors[key], SubjectAttnProcessor):
                    processors[key] = SubjectAttnProcessor(base_processor=stock[key])
                processors[key].add(f"<s{index}>", weights, subject.bias_deltas.get(layer), 1.0)
        setups[name] = processors
    times: dict[str, list[float]] = {name: [] for name in setups}
    for round_index in range(repeats + 1):
        for name, processors in setups.items():
            pipe.unet.set_attn_processor(dict(processors))
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.no_grad():
                pipe.unet(latents, 500, encoder_hidden_states=context)
            if device == "cuda":
                torch.cuda.synchronize()
            if round_index:  # round 0 warms up (allocations, the cached summed deltas)
                times[name].append((time.perf_counter() - start) * 1000)
    pipe.unet.set_attn_processor(dict(setups["stock"]))
    result = {f"{name}_ms": round(statistics.median(values), 2) for name, values in times.items()}
    for name in setups:
        if name != "stock":
            result[f"{name}_overhead_pct"] = round(100 * (result[f"{name}_ms"] / result["stock_ms"] - 1), 1)
    return result


def load_times(pipe, repeats: int, rank: int = 8) -> dict:
    """Milliseconds for ``load_subject`` from a folder (read, validate, add tokens, attach processors) and for
    ``unload_subject``: a full fp16 ``kv`` subject, the same compressed to rank ``rank``, and swapping one subject for
    another on the same pipeline (unload A + load B). Medians of ``repeats`` after one warm-up round (the first load
    into a pipeline also copies its token table once into a buffer with spare rows: ``first_load_ms``)."""
    from subjectgen_diffusers import load_subject, unload_subject

    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        full = _subject_for(pipe.unet, width, "kv").save(Path(tmp) / "full", dtype=torch.float16)
        low = _subject_for(pipe.unet, width, "kv", token="<s2>").save(Path(tmp) / "low", rank=rank, dtype=torch.float16)
        start = time.perf_counter()
        load_subject(pipe, full)
        result["first_load_ms"] = round((time.perf_counter() - start) * 1000, 1)
        unload_subject(pipe)
        for name, folder in (("full", full), (f"rank{rank}", low)):
            loads, unloads = [], []
            for index in range(repeats + 1):
                start = time.perf_counter()
                load_subject(pipe, folder)
                loaded = time.perf_counter()
                unload_subject(pipe)
                if index:
                    loads.append((loaded - start) * 1000)
                    unloads.append((time.perf_counter() - loaded) * 1000)
            result[f"{name}_load_ms"] = round(statistics.median(loads), 1)
            result[f"{name}_unload_ms"] = round(statistics.median(unloads), 1)
        swaps = []
        load_subject(pipe, full)
        current, other = ("<s1>", low), ("<s2>", full)
        for index in range(repeats + 1):
            start = time.perf_counter()
            unload_subject(pipe, current[0])
            load_subject(pipe, current[1])
            if index:
                swaps.append((time.perf_counter() - start) * 1000)
            current, other = other, current
        unload_subject(pipe)
        result["swap_full_and_compressed_ms"] = round(statistics.median(swaps), 1)
    return result


LOAD_GOALS_MS = {"rank8_load_ms": 50, "rank8_unload_ms": 50, "full_load_ms": 200, "full_unload_ms": 200}
"""Issue 11's goals at SD 1.5 shapes: a compressed subject loads and unloads in under 50 ms, a full one in 200 ms."""


def sd15_pipeline():
    """SD 1.5's UNet and CLIP ViT-L/14 text encoder shapes with random weights, the real tokenizer; no VAE needed."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from subjectgen_diffusers.tokenizer import build_clip_tokenizer
    from subjectgen_training.models.tiny_models import tiny_scheduler, tiny_vae

    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu"))
    return StableDiffusionPipeline(vae=tiny_vae(), text_encoder=text, tokenizer=build_clip_tokenizer(),
                                   unet=UNet2DConditionModel(**SD15_UNET), scheduler=tiny_scheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd15", action="store_true", help="also time SD 1.5-shaped models (3.4 GB fp32 in memory)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--latent", type=int, default=16, help="SD 1.5 latent side (64 = 512 px)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--load-repeats", type=int, default=5, help="load/unload rounds at SD 1.5 shapes")
    parser.add_argument("--load-only", action="store_true", help="skip the UNet-call timings")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 keeps medians stable on a shared machine)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    from subjectgen_training.models.tiny_models import build_tiny_sd_pipeline

    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    results = {"torch_threads": torch.get_num_threads(), "sd15_subject_file": sd15_file_sizes()}
    tiny = build_tiny_sd_pipeline()
    results["tiny_load"] = load_times(tiny, 5, rank=4)
    if not args.load_only:
        results["tiny_unet_call"] = processor_overhead(tiny, 8, 2, args.repeats, args.device, dtype)
    if args.sd15:
        pipe = sd15_pipeline()
        results["sd15_load"] = load_times(pipe, args.load_repeats)
        results["sd15_load_goals_met"] = {key: results["sd15_load"][key] < goal for key, goal in LOAD_GOALS_MS.items()}
        if not args.load_only:
            results["sd15_unet_call"] = {"latent": args.latent, "batch": 2, "device": args.device, "dtype": args.dtype,
                                         **processor_overhead(pipe, args.latent, 2, max(3, args.repeats // 4),
                                                              args.device, dtype)}
    print(json.dumps(results, indent=2))
    if args.json:
        from subjectgen_diffusers.atomic_io import atomic_write_json

        atomic_write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
