"""How far the toy detectors can be trusted on generated images: ``python -m subjectgen_training.toy.detector_check``.

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
   project's generator (:func:`subjectgen_training.sampling.generate.generate_images`); the attributes the caption names are the truth.
   (The mark is never captioned, so its truth is unknown here; its false-positive rate is measured in part 1.)
3. **Generated images labelled by hand.** ``tests/data/toy_labelled/``: images drawn by the toy base and by models
   trained on tuning subjects (every setup of the population experiment), each labelled by eye -- background, skin,
   hair colour and style, accessory, and the mark (colour and place, or "none") -- with "can't tell" left out. The
   table gives each attribute's accuracy against those labels, the mark detector's false-positive rate on images
   labelled without a mark, and how often it finds a mark that is there.

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
# On generated images labelled by hand (part 3), whose faces are often smeared. Issue 28 grew the set (toy-base samples
# of every skin x hair colour, and a trained dark face with long blond hair) and chose one bar per attribute on its
# development part, with the fixed rules: the development accuracy less two binomial standard errors, rounded down to
# 5 % (head 100 % of 106, background 98.1 % of 106, skin 94.1 % of 101, hair colour 90.7 % of 54, hair style 81.2 %
# of 64, accessory 90.9 % of 99, mark 84.0 % of 75); checked on the held-out part. Issue 14's single bar was 0.80.
# The densest-tone rule (detectors.face_tone, issue 28's last step) changed one development image (hair style 79.7 %);
# the bars were kept (the same procedure would now give hair style 0.65; 0.70 is stricter and holds on both parts).
REQUIRED_LABELLED = {"head": 0.95, "background": 0.95, "skin": 0.85, "hair_colour": 0.80, "hair_style": 0.70,
                     "accessory": 0.85, "mark": 0.75}
# Heads found per skin x hair-colour combination (and per skin's bald heads), over the whole labelled set: the floor
# the toy proof needs (issue 28; training/toy/README.md states the figure per combination).
HEAD_FLOOR = 0.95
# The mark detector's false positives at most 0.05 (issue 14; with the faint-mark step, 1 of the held-out part's 21
# images without a mark, 4.8 %). Marks found at least 0.75, on the images that bar was set and checked on (issue 14's
# 000-071: 83 % of the first 56, 5 of 7 held out; 96 % with the faint-mark step, README).
# What the held-out check found below its bar, each with why; the test holds these as known (and fails once one is
# fixed, so that its entry is removed): no threshold was moved for them.
KNOWN_BELOW_BAR: dict[tuple[str, str], str] = {}  # none since the faint-mark rule (detectors.faint_mark); the held-out
# mark was 70.4 % against its 75 % bar
KNOWN_BELOW_FLOOR: dict[str, str] = {}  # none since the densest-tone rule (detectors.face_tone); light/red was 14/15
MAX_LABELLED_MARK_FALSE_POSITIVES = 0.05
REQUIRED_MARKS_FOUND = 0.75
MARK_BAR_FILES = frozenset(f"{i:03d}.png" for i in range(72))


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
                    work: str | None = None, lora: str | None = None, every: int = 1) -> dict[str, float]:
    """Accuracy of each captioned attribute on a model's samples of fully captioned prompts (every ``every``-th of
    the 90 skin x background x hair colour requests), made by the project's generator. With a model that draws what
    it is told, this measures the detectors; with trusted detectors, it measures how well a model (or the model plus
    ``lora``) draws what its caption names."""
    from subjectgen_training.models.builtin_models import resolve_model
    from subjectgen_training.sampling.generate import GenerateConfig, generate_images, read_manifest

    rng = np.random.default_rng(seed)
    specs = []
    for skin, background, colour in itertools.product(world.SKINS, world.BACKGROUNDS, world.HAIR_COLOURS):
        other = world.random_spec(rng, mark_probability=0.0)
        style = ("short", "long")[int(rng.integers(2))]
        specs.append(other.replace(skin=skin, background=background, hair_colour=colour, hair_style=style))
    specs = specs[::every]
    captions = [spec.caption() for spec in specs]
    folder = Path(work or tempfile.mkdtemp(prefix="toy-detector-check-"))
    folder.mkdir(parents=True, exist_ok=True)
    prompt_file = folder / "prompts.txt"
    prompt_file.write_text("".join(f"{caption}\n" for caption in captions), encoding="utf-8")
    generate_images(GenerateConfig(base=resolve_model(model), prompts=str(prompt_file), out=str(folder / "images"),
                                   num_per_prompt=1, seed=seed, steps=steps, guidance=guidance,
                                   resolution=world.SIZE, batch_size=30, lora=resolve_model(lora) if lora else None))
    entries = {entry["prompt_template"]: entry for entry in read_manifest(folder / "images")}
    right = {a: [] for a in ATTRIBUTES if a != "mark"}
    for spec, caption in zip(specs, captions):
        read = reading_of(Image.open(folder / "images" / entries[caption]["file"]))
        want = truth(spec)
        for a in right:
            if a == "accessory" and spec.accessory == "none":
                continue  # the base may add an accessory nobody asked for; only asked-for ones are scored
            right[a].append(read[a] == want[a])
    name = model.removeprefix("builtin:") + (f" + {lora.removeprefix('builtin:')}" if lora else "")
    return {**{a: float(np.mean(v)) for a, v in right.items()}, "images": len(specs), "model": name}


LABELLED = Path(__file__).resolve().parents[2] / "tests" / "data" / "toy_labelled"
LABEL_KEYS = ("file", "source", "part", "head", "background", "skin", "hair_colour", "hair_style", "accessory", "mark")


def read_labels(folder: Path = LABELLED) -> list[dict]:
    """The hand labels (``labels.json``); a mark is ``"none"``, ``"<colour> <place>"`` or ``None`` (can't tell)."""
    entries = json.loads((Path(folder) / "labels.json").read_text(encoding="utf-8"))["images"]
    for entry in entries:
        if set(entry) != set(LABEL_KEYS):
            raise ValueError(f"{entry.get('file')}: label keys must be {LABEL_KEYS}, got {sorted(entry)}")
    return entries


def _mark_label(reading: tuple[str, str] | None) -> str:
    return "none" if reading is None else f"{reading[0]} {reading[1]}"


def combination_of(entry: dict) -> str | None:
    """``"<skin>/<hair colour>"`` of a labelled image (``"<skin>/bald"`` for a bald head), ``None`` where the labeller
    could not tell either."""
    hair = "bald" if entry["hair_style"] == "bald" else entry["hair_colour"]
    return None if entry["skin"] is None or hair is None else f"{entry['skin']}/{hair}"


def labelled_table(folder: Path = LABELLED, part: str | None = None, files: frozenset[str] | None = None) -> dict:
    """Accuracy of each attribute against the hand labels (labelled images only; ``part``: only the ``development``
    or ``held-out`` images), the mark's false-positive rate on images labelled "none" and its recall (colour and
    place right) on images labelled with a mark (``files``: only those images); per skin x hair-colour combination (``combination_of``), the share
    of heads found on images labelled with a head (``head by combination``: ``[found, labelled]``) and of images
    with every labelled attribute right, and the combination where that share is lowest (``worst combination``)."""
    right: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
    false_marks, found_marks = [], []
    heads: dict[str, list[bool]] = {}
    all_right: dict[str, list[bool]] = {}
    entries = [e for e in read_labels(folder) if (part is None or e["part"] == part) and (files is None or e["file"] in files)]
    for entry in entries:
        read = reading_of(Image.open(Path(folder) / entry["file"]))
        read["mark"] = _mark_label(read["mark"])
        for a in ATTRIBUTES:
            if entry[a] is not None:
                right[a].append(read[a] == entry[a])
        if entry["mark"] == "none":
            false_marks.append(read["mark"] != "none")
        elif entry["mark"] is not None:
            found_marks.append(read["mark"] == entry["mark"])
        combination = combination_of(entry)
        if combination is not None and entry["head"]:
            heads.setdefault(combination, []).append(read["head"])
            all_right.setdefault(combination, []).append(all(read[a] == entry[a] for a in ATTRIBUTES if entry[a] is not None))
    table: dict = {a: float(np.mean(v)) for a, v in right.items() if v}
    table.update({f"{a} labelled": len(v) for a, v in right.items()})
    table["mark false positives"] = float(np.mean(false_marks))
    table["marks found"] = float(np.mean(found_marks))
    table["images"] = len(entries)
    table["head by combination"] = {k: [int(sum(v)), len(v)] for k, v in sorted(heads.items())}
    table["all right by combination"] = {k: [int(sum(v)), len(v)] for k, v in sorted(all_right.items())}
    worst = min(sorted(all_right), key=lambda k: np.mean(all_right[k]))
    table["worst combination"] = worst
    table["worst combination (all right)"] = float(np.mean(all_right[worst]))
    return table


LABELLED_PARTS = ("development", "held-out")


def markdown(rendered: dict[str, dict], generated: dict[str, float] | None, labelled: dict[str, dict] | None = None) -> str:
    """The README's table; ``labelled`` maps a part (``development``, ``held-out``, ``all``) to its ``labelled_table``,
    and adds the table of heads found per skin x hair-colour combination."""
    cols = [*ATTRIBUTES, "mark false positives", "worst combination (all right)"]
    lines = ["| images | " + " | ".join(cols) + " | worst combination |", "| --- |" + " ---: |" * len(cols) + " --- |"]
    for name, row in rendered.items():
        cells = [f"{row[c]:.1%}" for c in cols]
        lines.append(f"| rendered, {name} ({row['images']}) | " + " | ".join(cells) + f" | {row['worst combination']} |")
    if generated is not None:
        cells = [f"{generated[c]:.1%}" if c in generated else "–" for c in cols]
        lines.append(f"| generated by {generated.get('model', 'toy-base')}, fully captioned ({generated['images']}) | " + " | ".join(cells) + " | – |")
    for part, table in (labelled or {}).items():
        cells = [f"{table[c]:.1%}" if c in table else "–" for c in cols]
        lines.append(f"| generated, labelled by hand, {part} ({table['images']}; marks found {table['marks found']:.0%}) | "
                     + " | ".join(cells) + f" | {table['worst combination']} |")
    if labelled:
        parts = list(labelled)
        combinations = sorted({c for table in labelled.values() for c in table["head by combination"]})
        lines += ["", "| skin/hair colour | " + " | ".join(f"heads found, {p}" for p in parts) + " |",
                  "| --- |" + " ---: |" * len(parts)]
        for combination in combinations:
            cells = []
            for part in parts:
                found, labelled_heads = labelled[part]["head by combination"].get(combination, (0, 0))
                cells.append(f"{found}/{labelled_heads} ({found / labelled_heads:.0%})" if labelled_heads else "–")
            lines.append(f"| {combination} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-combination", type=int, default=2, help="rendered faces per combination (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-generated", action="store_true", help="skip the model's samples")
    parser.add_argument("--model", default="builtin:toy-base", help="the model whose samples part 2 reads "
                        "(default: %(default)s)")
    parser.add_argument("--lora", default=None, help="a LoRA loaded on --model for part 2, e.g. builtin:toy-alt-lora")
    parser.add_argument("--labelled", default=str(LABELLED), help="folder of hand-labelled generated images "
                        "(labels.json); '' skips them (default: the repository's tests/data/toy_labelled)")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    rendered = rendered_table(args.per_combination, args.seed)
    generated = None if args.no_generated else generated_table(args.model, seed=args.seed, lora=args.lora)
    labelled = None
    if args.labelled and Path(args.labelled).is_dir():
        labelled = {part: labelled_table(Path(args.labelled), part) for part in (*LABELLED_PARTS, None)}
        labelled["all"] = labelled.pop(None)
    print(markdown(rendered, generated, labelled))
    if args.json:
        Path(args.json).write_text(json.dumps({"rendered": rendered, "generated": generated, "labelled": labelled},
                                              indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
