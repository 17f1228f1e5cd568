"""The five-setup experiment in the toy world, where "is the subject learned?" has a measured answer on a CPU.

Setups (the seed's five, issue 5): ``cd-noreg``, ``cd-reg-base`` (regularisation images from the toy base model),
``cd-reg-alt`` (from the alternative model: ``toy-base`` plus the ``toy-alt-lora`` style LoRA), ``cr``, ``cd+cr-reg``; plus a
``baseline`` row: the base model prompted with the class phrase, no training. Every stage goes through the project's
own code -- regularisation (:func:`training.regularize.generate_regularization`), training
(:func:`training.trainer.train`), loading (:func:`subjectgen_diffusers.load_subject`) -- and each image is scored by
the toy likeness (:class:`training.toy.identity.ToyIdentity` against the subject's photos, Celeb Basis protocol:
no head found = 0) and prompt-following (:func:`training.toy.prompt_check.prompt_score`). Finished stages are kept,
so a stopped run resumes. Outputs: ``summary.json``, ``summary.md``, ``report.html`` and one image grid per row.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from subjectgen_diffusers.atomic_io import atomic_save_image, atomic_write_json, atomic_write_text
from subjectgen_diffusers.errors import SubjectgenError

from . import world
from .report import write_report
from .subject_photos import write_subject_photos

logger = logging.getLogger(__name__)
WEIGHTS = Path(__file__).resolve().parent / "weights"
BASELINE = "baseline"
SCORES_FILE = "scores.json"
RUNNER = "training.toy.experiment:run_config_file"


class ToyExperimentError(SubjectgenError):
    """The toy experiment config is wrong; the message names the key and what is allowed."""


def _strict(cls, data: dict[str, Any], where: str):
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ToyExperimentError(f"{where}: unknown keys {unknown}; allowed keys are {allowed}.")
    return cls(**data)


@dataclass
class SetupConfig:
    method: str  # cd | cr | cd+cr
    reg: str | None = None  # None | "base" | "alt": which toy model draws the regularisation images
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields for this setup only


@dataclass
class ToyExperimentConfig:
    setups: dict[str, SetupConfig]
    prompts: list[str]  # "{}" = the subject phrase ("<token> cartoon face"; "cartoon face" for the baseline)
    runner: str = RUNNER  # how `subjectgen experiment` finds this runner (training/commands/experiment.py)
    base: str = "toy-base"  # a shipped toy model name or a diffusers folder
    alt_model: str = "toy-base"  # the alternative model's base ...
    alt_lora: str | None = "toy-alt-lora"  # ... and the LoRA on it (a shipped name, folder or Hub id), as SDXL + LoRA
    subject: dict[str, Any] = field(default_factory=dict)  # ToySubject fields (default: the built-in subject)
    num_photos: int = 6
    photo_seed: int = 0
    reg_prompt: str = "a cartoon face"
    reg_num: int = 32
    reg_steps: int = 20
    reg_guidance: float = 4.0
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields shared by every setup
    num_per_prompt: int = 4
    steps: int = 20
    guidance: float = 4.0
    seed: int = 1000

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToyExperimentConfig:
        data = dict(data)
        setups = data.get("setups")
        if not isinstance(setups, dict) or not setups:
            raise ToyExperimentError("`setups` must map setup names to {method, reg, train}.")
        if BASELINE in setups:
            raise ToyExperimentError(f"`{BASELINE}` is reserved for the untrained row; rename that setup.")
        data["setups"] = {name: _strict(SetupConfig, dict(value), f"setup {name}") for name, value in setups.items()}
        for name, setup in data["setups"].items():
            if setup.reg not in (None, "base", "alt"):
                raise ToyExperimentError(f"setup {name}: reg must be null, base or alt, got {setup.reg!r}.")
        config = _strict(cls, data, "toy experiment")
        world.ToySubject(**config.subject)  # unknown subject fields fail here
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> ToyExperimentConfig:
        import yaml

        return cls.from_dict(yaml.safe_load(Path(path).read_text(encoding="utf-8")))


def model_path(name: str) -> str:
    """A shipped toy model or LoRA (``toy-base``, ``toy-alt-lora``) or any diffusers folder / Hub id as given."""
    shipped = WEIGHTS / name
    shipped_files = (shipped / "model_index.json").is_file() or (shipped / "pytorch_lora_weights.safetensors").is_file()
    return str(shipped) if shipped_files else name


def make_regularization(config: ToyExperimentConfig, source: str, out: Path) -> Path:
    from training.regularize import RegularizeConfig, generate_regularization

    model = model_path(config.base if source == "base" else config.alt_model)
    lora = model_path(config.alt_lora) if source == "alt" and config.alt_lora else None
    return Path(generate_regularization(RegularizeConfig(
        model=model, lora=lora, prompt=config.reg_prompt, num=config.reg_num, out=out, seed=0, steps=config.reg_steps,
        guidance=config.reg_guidance, resolution=world.SIZE, batch_size=16,
    )))


def train_setup(config: ToyExperimentConfig, setup: SetupConfig, photos: Path, reg_dir: Path | None, out: Path) -> Path:
    from training.train_config import TrainConfig
    from training.trainer import train

    if (out / "subject_config.json").is_file() and (out / "train_config.json").is_file():
        return out
    values = {**config.train, **setup.train, "base": model_path(config.base), "photos": str(photos),
              "method": setup.method, "out": str(out), "reg_dir": str(reg_dir) if reg_dir else None}
    return Path(train(TrainConfig.from_dict(values)))


def generate(config: ToyExperimentConfig, subject_folder: Path | None, out: Path, class_phrase: str) -> list[dict]:
    """Sample every prompt ``num_per_prompt`` times with fixed seeds; return the manifest entries."""
    import torch
    from diffusers import StableDiffusionPipeline

    from subjectgen_diffusers import load_subject

    pipe = StableDiffusionPipeline.from_pretrained(model_path(config.base), safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    phrase = class_phrase
    if subject_folder is not None:
        phrase = f"{load_subject(pipe, subject_folder)} {class_phrase}"
    entries = []
    for p_index, template in enumerate(config.prompts):
        prompt = template.format(phrase)
        seeds = [config.seed + i for i in range(config.num_per_prompt)]
        images = pipe([prompt] * len(seeds), num_inference_steps=config.steps, guidance_scale=config.guidance,
                      height=world.SIZE, width=world.SIZE,
                      generator=[torch.Generator().manual_seed(s) for s in seeds]).images
        for seed, image in zip(seeds, images):
            name = f"p{p_index:02d}_s{seed}.png"
            atomic_save_image(out / name, image)
            entries.append({"file": name, "prompt_template": template, "prompt": prompt, "seed": seed})
    return entries


def score_images(folder: Path, entries: list[dict], photos: Path, subject: world.ToySubject) -> list[dict]:
    from training.evaluation.metrics import identity_score
    from training.photos import load_image

    from .detectors import read_face
    from .identity import ToyIdentity
    from .prompt_check import prompt_score

    encoder = ToyIdentity()
    references = [encoder.embed(load_image(p)) for p in sorted(photos.glob("photo_*.png"))]
    references = [r for r in references if r is not None]
    scored = []
    for entry in entries:
        image = load_image(folder / entry["file"])
        embedding = encoder.embed(image)
        reading = read_face(image)
        traits = [reading.skin == subject.skin, reading.hair_colour == subject.hair_colour,
                  reading.hair_style == subject.hair_style]
        scored.append({**entry, "face_found": embedding is not None,
                       "hidden_mark": float(reading.mark == tuple(subject.mark)), "traits": float(np.mean(traits)),
                       "likeness": identity_score(embedding, references, encoder.similarity),
                       "prompt_following": prompt_score(image, entry["prompt"])})
    return scored


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarize(scored: list[dict]) -> dict[str, Any]:
    return {"images": len(scored), "likeness": _mean(e["likeness"] for e in scored),
            "prompt_following": _mean(e["prompt_following"] for e in scored),
            "face_found": _mean(float(e["face_found"]) for e in scored),
            "hidden_mark": _mean(e["hidden_mark"] for e in scored), "traits": _mean(e["traits"] for e in scored)}


def save_grid(folder: Path, scored: list[dict], prompts: list[str], per_prompt: int, zoom: int = 3) -> Path:
    """Rows = prompts, columns = seeds, each image enlarged ``zoom`` times (nearest neighbour)."""
    from PIL import Image

    cell = world.SIZE * zoom
    grid = Image.new("RGB", (cell * per_prompt, cell * len(prompts)), "white")
    for entry in scored:
        row = prompts.index(entry["prompt_template"])
        column = [e["seed"] for e in scored if e["prompt_template"] == entry["prompt_template"]].index(entry["seed"])
        with Image.open(folder / entry["file"]) as image:
            grid.paste(image.convert("RGB").resize((cell, cell), Image.NEAREST), (column * cell, row * cell))
    return atomic_save_image(folder.parent / "grid.png", grid)


def run_row(config: ToyExperimentConfig, name: str, subject_folder: Path | None, out: Path, photos: Path,
            class_phrase: str) -> dict[str, Any]:
    row_dir = out / name
    scores_path = row_dir / SCORES_FILE
    if scores_path.is_file():
        return json.loads(scores_path.read_text(encoding="utf-8"))["summary"]
    images = row_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    subject = world.ToySubject(**config.subject)
    scored = score_images(images, generate(config, subject_folder, images, class_phrase), photos, subject)
    save_grid(images, scored, config.prompts, config.num_per_prompt)
    summary = summarize(scored)
    atomic_write_json(scores_path, {"summary": summary, "images": scored})
    return summary


def _cell(row: dict[str, Any], key: str, digits: int = 3) -> str:
    return "—" if row.get(key) is None else f"{row[key]:.{digits}f}"


def write_summary_md(out: Path, rows: dict[str, dict[str, Any]]) -> Path:
    lines = ["# Toy-world five-setup experiment", "",
             "Likeness: toy identity vs the subject's photos (0.5 hidden mark + 0.5 traits; no head = 0), split into "
             "its parts: the hidden mark (colour and place) and the traits (skin, hair colour, hair style). "
             "Prompt-following: fraction of requested backgrounds/accessories present (pixel rules). "
             "Open report.html for the images.", "",
             "| setup | likeness | hidden mark | traits | prompt-following | head found | grid |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in rows.items():
        lines.append(f"| {name} | {_cell(row, 'likeness')} | {_cell(row, 'hidden_mark', 2)} | {_cell(row, 'traits', 2)} | "
                     f"{_cell(row, 'prompt_following')} | {_cell(row, 'face_found', 2)} | [grid]({name}/grid.png) |")
    return atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")


def run_toy_experiment(config: ToyExperimentConfig, out: str | Path) -> Path:
    """Run (or resume) every stage; return the path of ``summary.json``."""
    out = Path(out)
    subject = world.ToySubject(**config.subject)
    photos = out / "photos"
    if not (photos / "subject.json").is_file():
        write_subject_photos(photos, subject, config.num_photos, config.photo_seed)
    needed = sorted({s.reg for s in config.setups.values() if s.reg})
    reg_dirs = {source: make_regularization(config, source, out / f"reg-{source}") for source in needed}
    rows = {BASELINE: run_row(config, BASELINE, None, out, photos, subject.class_phrase)}
    for name, setup in config.setups.items():
        logger.info("setup %s", name)
        folder = train_setup(config, setup, photos, reg_dirs.get(setup.reg), out / name / "subject")
        rows[name] = run_row(config, name, folder, out, photos, subject.class_phrase)
    atomic_write_json(out / "summary.json", {"rows": rows, "config": dataclasses.asdict(config)})
    write_summary_md(out, rows)
    write_report(out, rows, config.prompts, f"<token> {subject.class_phrase}")
    return out / "summary.json"


def run_config_file(path: str | Path, out: str | Path) -> Path:
    """The ``runner:`` entry point ``subjectgen experiment five_setups_toy --out DIR`` calls."""
    return run_toy_experiment(ToyExperimentConfig.from_file(path), out)


def main(argv: list[str] | None = None) -> int:
    """``python -m training.toy.experiment CONFIG --out DIR`` (CONFIG: a path or a shipped config name)."""
    import argparse

    parser = argparse.ArgumentParser(description="Run the toy-world five-setup experiment.")
    parser.add_argument("config", help="YAML path, or the name of a shipped config (five_setups_toy)")
    parser.add_argument("--out", required=True, help="output folder (rerun to resume)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path = Path(args.config)
    if not path.is_file():
        path = Path(__file__).resolve().parents[1] / "configs" / f"{args.config}.yaml"
    if not path.is_file():
        raise ToyExperimentError(f"{args.config} is neither a file nor a shipped config (try five_setups_toy).")
    summary = run_toy_experiment(ToyExperimentConfig.from_file(path), args.out)
    print((summary.parent / "summary.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    import sys

    try:
        raise SystemExit(main())
    except SubjectgenError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
