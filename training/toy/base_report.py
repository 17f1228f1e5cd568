"""How well a toy model draws what its caption asks for: ``python -m training.toy.base_report [MODEL]``.

Samples one image per (background, accessory, skin, hair colour) request with fixed seeds and reads every image back
with the pixel rules of :mod:`training.toy.detectors`; prints the fraction of images whose head was found and whose
background, accessory, skin, hair colour and hair style match the caption (chance: 1/6, 1/3, 1/3, 1/5, 1/3).
The full run's figures are in ``training/toy/README.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np
import torch

from . import detectors, world

REQUESTS = list(itertools.product(("red", "blue", "yellow", "purple"), ("none", "hat", "glasses"),
                                  ("light", "dark"), ("black", "blond", "red")))


def caption(background: str, accessory: str, skin: str, hair: str, style: str = "short") -> str:
    spec = world.FaceSpec(background=background, skin=skin, hair_colour=hair, hair_style=style, eye_colour="blue",
                          mouth="smiling", accessory=accessory)
    return spec.caption()


def measure(pipe, seed: int = 0, steps: int = 20, guidance: float = 4.0, every: int = 1) -> dict[str, float]:
    """Rates in [0, 1] over :data:`REQUESTS` (or every ``every``-th of them). The accessory rate counts the requests
    for a hat or glasses: a caption that names no accessory leaves it open, as the training captions do."""
    requests = REQUESTS[::every]
    readings = []
    for start in range(0, len(requests), 24):
        chunk = requests[start : start + 24]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        images = pipe([caption(*r) for r in chunk], num_inference_steps=steps, guidance_scale=guidance,
                      height=world.SIZE, width=world.SIZE, generator=generators).images
        readings += [detectors.read_face(image) for image in images]
    pairs = list(zip(readings, requests))
    return {
        "images": len(pairs),
        "head": float(np.mean([r.head_found for r, _ in pairs])),
        "background": float(np.mean([r.background == q[0] for r, q in pairs])),
        "accessory": float(np.mean([r.accessory == q[1] for r, q in pairs if q[1] != "none"])),
        "skin": float(np.mean([r.skin == q[2] for r, q in pairs])),
        "hair_colour": float(np.mean([r.hair_colour == q[3] for r, q in pairs])),
        "hair_style": float(np.mean([r.hair_style == "short" for r, _ in pairs])),
    }


def main(argv: list[str] | None = None) -> int:
    from diffusers import StableDiffusionPipeline

    from .models import model_path

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="toy-base", help="a shipped toy model name or a diffusers folder")
    parser.add_argument("--lora", default=None, help="a LoRA to load on the model (e.g. toy-alt-lora)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    pipe = StableDiffusionPipeline.from_pretrained(model_path(args.model), safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    if args.lora:
        pipe.load_lora_weights(model_path(args.lora))
    pipe.set_progress_bar_config(disable=True)
    print(json.dumps(measure(pipe, args.seed, args.steps), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
