"""How far the toy detectors can be trusted on generated images: ``python -m training.toy.detector_check``.

Two measurements, both printed as a markdown table (the one in ``training/toy/README.md``):

1. **Rendered faces under generation-like damage.** Every skin x background x hair colour x hair style combination
   (3 x 6 x 5 x 3 = 270; hair colour does not apply to bald heads) is rendered ``--per-combination`` times with the
   other attributes (eyes, mouth, head shape, accessory, mark or none, pose) drawn at random, then damaged the way
   a diffusion model's output drifts from the palette: a colour shift (each channel moved by up to +/-20), a blur
   (Gaussian, radius 0.6 px), pixel noise (sigma 8), a shift of up to 2 pixels (edges repeated), and all four
   together. For each damage: the accuracy of head-finding and of each attribute read back, the mark detector's
   false-positive rate on faces without a mark, and the worst combination's accuracy.
2. **Base-model samples with known truth.** The toy base model draws fully captioned prompts (every skin x
   background x hair colour, a random hair style, eyes, mouth, head shape and accessory, each named), through the
   project's generator (:func:`training.generate.generate_images`); the attributes the caption names are the truth.
   (The mark is never captioned, so its truth is unknown here; its false-positive rate is measured in part 1.)

Chance levels: background 1/6, skin 1/3, hair colour 1/5, hair style 1/3, accessory 1/3.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from . import detectors, world

ATTRIBUTES = ("head", "background", "skin", "hair_colour", "hair_style", "accessory", "mark")
# What every attribute must reach under every damage (the "stated accuracy"); README and the test use it.
# 0.90: the lowest rate of the README table (hair style under all four damages, 94.2 % of 396 faces, seed 0) less
# three binomial standard errors of the test's 198-face sample (3 x 1.6 %). A first bar of 0.93 failed on the test's
# sample (hair colour 92.9 %): it had no room for that sample's own noise.
REQUIRED_ACCURACY = 0.90
REQUIRED_GENERATED = 0.90  # each captioned attribute on the base model's samples
MAX_MARK_FALSE_POSITIVES = 0.02


def colour_shift(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return array.astype(np.float32) + rng.uniform(-20, 20, size=3).astype(np.float32)


def blur(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    image = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32)


def noise(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return array.astype(np.float32) + rng.normal(0, 8, size=array.shape).astype(np.float32)


def offset(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    dy, dx = (int(v) for v in rng.integers(-2, 3, size=2))
    padded = np.pad(array.astype(np.float32), ((2, 2), (2, 2), (0, 0)), mode="edge")
    return padded[2 + dy : 2 + dy + world.SIZE, 2 + dx : 2 + dx + world.SIZE]


def everything(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    for damage in (offset, colour_shift, blur, noise):
        array = damage(array, rng)
    return array


DAMAGES = {"none": lambda a, rng: a.astype(np.float32), "colour shift": colour_shift, "blur": blur, "noise": noise,
           "offset": offset, "all four": everything}


def combinations() -> list[tuple[str, str, str, str]]:
    """(skin, background, hair colour, hair style); a bald head has no hair colour, so it appears once per skin x
    background under the first colour's name."""
    combos = []
    for skin, background, colour, style in itertools.product(world.SKINS, world.BACKGROUNDS, world.HAIR_COLOURS,
                                                             world.HAIR_STYLES):
        if style != "bald" or colour == next(iter(world.HAIR_COLOURS)):
            combos.append((skin, background, colour, style))
    return combos


def truth(spec: world.FaceSpec) -> dict:
    return {"head": True, "background": spec.background, "skin": spec.skin,
            "hair_colour": None if spec.hair_style == "bald" else spec.hair_colour, "hair_style": spec.hair_style,
            "accessory": spec.accessory, "mark": spec.mark}


def reading_of(image) -> dict:
    r = detectors.read_face(image)
    return {"head": r.head_found, "background": r.background, "skin": r.skin, "hair_colour": r.hair_colour,
            "hair_style": r.hair_style, "accessory": r.accessory, "mark": r.mark}


def rendered_table(per_combination: int = 2, seed: int = 0, damages: tuple[str, ...] = tuple(DAMAGES)) -> dict[str, dict[str, float]]:
    """Per damage: accuracy of each attribute, the mark's false-positive rate, the worst combination's accuracy."""
    rng = np.random.default_rng(seed)
    specs = []
    for skin, background, colour, style in combinations():
        for _ in range(per_combination):
            other = world.random_spec(rng)
            specs.append(other.replace(skin=skin, background=background, hair_colour=colour, hair_style=style))
    table = {}
    for name in damages:
        damage = DAMAGES[name]
        damage_rng = np.random.default_rng([seed, len(name)])
        right = {a: [] for a in ATTRIBUTES}
        false_marks, per_combo = [], {}
        for spec in specs:
            read = reading_of(np.clip(damage(world.render_array(spec), damage_rng), 0, 255))
            want = truth(spec)
            ok = {a: read[a] == want[a] for a in ATTRIBUTES}
            for a in ATTRIBUTES:
                right[a].append(ok[a])
            if spec.mark is None:
                false_marks.append(read["mark"] is not None)
            per_combo.setdefault((spec.skin, spec.background, spec.hair_colour, spec.hair_style), []).append(all(ok.values()))
        row = {a: float(np.mean(v)) for a, v in right.items()}
        row["mark false positives"] = float(np.mean(false_marks))
        worst = min(per_combo, key=lambda k: np.mean(per_combo[k]))
        row["worst combination (all right)"] = float(np.mean(per_combo[worst]))
        row["worst combination"] = "/".join(worst)
        row["images"] = len(specs)
        table[name] = row
    return table


def generated_table(model: str = "builtin:toy-base", seed: int = 0, steps: int = 20, guidance: float = 4.0,
                    work: str | None = None) -> dict[str, float]:
    """Accuracy of each captioned attribute on base-model samples of fully captioned prompts."""
    from training.builtin_models import resolve_model
    from training.generate import GenerateConfig, generate_images, read_manifest

    rng = np.random.default_rng(seed)
    specs = []
    for skin, background, colour in itertools.product(world.SKINS, world.BACKGROUNDS, world.HAIR_COLOURS):
        other = world.random_spec(rng, mark_probability=0.0)
        style = ("short", "long")[int(rng.integers(2))]
        specs.append(other.replace(skin=skin, background=background, hair_colour=colour, hair_style=style))
    captions = [spec.caption() for spec in specs]
    folder = Path(work or tempfile.mkdtemp(prefix="toy-detector-check-"))
    folder.mkdir(parents=True, exist_ok=True)
    prompt_file = folder / "prompts.txt"
    prompt_file.write_text("".join(f"{caption}\n" for caption in captions), encoding="utf-8")
    generate_images(GenerateConfig(base=resolve_model(model), prompts=str(prompt_file), out=str(folder / "images"),
                                   num_per_prompt=1, seed=seed, steps=steps, guidance=guidance,
                                   resolution=world.SIZE, batch_size=30))
    entries = {entry["prompt_template"]: entry for entry in read_manifest(folder / "images")}
    right = {a: [] for a in ATTRIBUTES if a != "mark"}
    for spec, caption in zip(specs, captions):
        read = reading_of(Image.open(folder / "images" / entries[caption]["file"]))
        want = truth(spec)
        for a in right:
            if a == "accessory" and spec.accessory == "none":
                continue  # the base may add an accessory nobody asked for; only asked-for ones are scored
            right[a].append(read[a] == want[a])
    return {**{a: float(np.mean(v)) for a, v in right.items()}, "images": len(specs)}


def markdown(rendered: dict[str, dict], generated: dict[str, float] | None) -> str:
    cols = [*ATTRIBUTES, "mark false positives", "worst combination (all right)"]
    lines = ["| images | " + " | ".join(cols) + " | worst combination |", "| --- |" + " ---: |" * len(cols) + " --- |"]
    for name, row in rendered.items():
        cells = [f"{row[c]:.1%}" for c in cols]
        lines.append(f"| rendered, {name} ({row['images']}) | " + " | ".join(cells) + f" | {row['worst combination']} |")
    if generated is not None:
        cells = [f"{generated[c]:.1%}" if c in generated else "–" for c in cols]
        lines.append(f"| generated by toy-base, fully captioned ({generated['images']}) | " + " | ".join(cells) + " | – |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-combination", type=int, default=2, help="rendered faces per combination (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-generated", action="store_true", help="skip the base-model samples")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    rendered = rendered_table(args.per_combination, args.seed)
    generated = None if args.no_generated else generated_table(seed=args.seed)
    print(markdown(rendered, generated))
    if args.json:
        Path(args.json).write_text(json.dumps({"rendered": rendered, "generated": generated}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
