"""Likeness and prompt-following of a toy subject against its low-rank compressed versions, with SD 1.5 file sizes.

    python -m subjectgen_training.benchmarks.compress_toy --out runs/compress-toy      # resumable; ~10 min on one CPU thread

Trains the ``cd+cr-reg`` setup of ``training/configs/five_setups_toy.yaml`` once through the one experiment runner
(its stages: photos, regularisation images, training, sampling and scoring), then compresses that subject with
:func:`subjectgen_diffusers.compress.compress_subject` at rank 1, 2, 4, 8, 16 and energy 0.6 / 0.9 and scores each with
the same prompts and seeds. File sizes are those of ``subject.safetensors`` (fp16) for SD 1.5's 16 cross-attention
layers at the same rank (for the energy rows: the mean rank the toy deltas kept, rounded up).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
from pathlib import Path

import torch

from subjectgen_diffusers.atomic_io import atomic_write_json, atomic_write_text

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "five_setups_toy.yaml"
SETUP = "cd+cr-reg"
VARIANTS = {**{f"rank {r}": {"rank": r} for r in (1, 2, 4, 8, 16)}, "energy 0.6": {"energy": 0.6},
            "energy 0.9": {"energy": 0.9}}


def sd15_size_mib(scope: str, rank: int | None) -> float:
    """MiB of an fp16 subject file at SD 1.5's shapes, dense (``rank=None``) or with rank-``rank`` factors."""
    from diffusers import UNet2DConditionModel

    from subjectgen_training.benchmarks.plugin_bench import SD15_UNET, _subject_for

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
    subject = _subject_for(unet, 768, scope)
    with tempfile.TemporaryDirectory() as tmp:
        folder = subject.save(Path(tmp) / "s", rank=rank, dtype=torch.float16)
        return round((folder / "subject.safetensors").stat().st_size / 2**20, 2)


def _row(run: dict) -> dict:
    overall = run["overall"]
    parts = overall["identity_parts"]
    return {"likeness": overall["identity"]["mean"], "hidden_mark": parts["hidden_mark"]["mean"],
            "traits": parts["traits"]["mean"], "prompt_following": overall["prompt_following"]["mean"]}


def run(out: Path) -> dict:
    from subjectgen_diffusers.compress import COMPRESS_REPORT, compress_subject
    from subjectgen_training.models.builtin_models import resolve_model
    from subjectgen_training.experiment import load_experiment_config
    from subjectgen_training.experiment.runner import run_experiment
    from subjectgen_training.experiment.stages import ExperimentLayout, sample_and_score

    config = load_experiment_config(CONFIG)
    config = dataclasses.replace(config, setups=[s for s in config.setups if s.name == SETUP], baseline=False)
    summary = json.loads(run_experiment(config, out).read_text(encoding="utf-8"))
    layout = ExperimentLayout(out)
    subject = config.subjects[0].name
    full = layout.run(subject, SETUP) / "subject"
    photos = summary["subjects"][0]["photos"]
    base = resolve_model(config.resolve_path(config.base), layout.models)
    scope = json.loads((full / "subject_config.json").read_text())["cd_scope"]
    rows = {"full": {**_row(summary["runs"][0]), "mean_rank": None, "sd15_fp16_MiB": sd15_size_mib(scope, None)}}
    for name, kwargs in VARIANTS.items():
        variant = f"{SETUP}-{name.replace(' ', '-')}"
        folder = layout.run(subject, variant) / "subject"
        if not (folder / COMPRESS_REPORT).is_file():
            compress_subject(full, folder, **kwargs)
        report = json.loads((folder / COMPRESS_REPORT).read_text())
        ranks = [entry["rank"] for entry in report["layers"].values()]
        mean_rank = sum(ranks) / len(ranks)
        scored = sample_and_score(config, layout, subject, variant, folder, photos, base)
        rows[name] = {**_row(scored), "mean_rank": round(mean_rank, 2),
                      "max_relative_error": round(report["max_relative_error"], 4),
                      "sd15_fp16_MiB": sd15_size_mib(scope, math.ceil(mean_rank))}
    result = {"setup": SETUP, "cd_scope": scope, "rows": rows}
    atomic_write_json(out / "compress_toy.json", result)
    lines = ["| subject | mean rank | largest rel. error | likeness | hidden mark | traits | prompt-following | "
             "SD 1.5 size (fp16) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, row in rows.items():
        rank = "full" if row["mean_rank"] is None else f"{row['mean_rank']:g}"
        error = f"{row.get('max_relative_error', 0.0):.3f}"
        lines.append(f"| {name} | {rank} | {error} | {row['likeness']:.3f} | {row['hidden_mark']:.2f} | "
                     f"{row['traits']:.2f} | {row['prompt_following']:.3f} | {row['sd15_fp16_MiB']:.2f} MiB |")
    atomic_write_text(out / "compress_toy.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder (rerun to resume)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    return run(args.out)


if __name__ == "__main__":
    main()
