"""``subjectgen evaluate``: identity, prompt fidelity and face-detection rate of a folder of images."""

from __future__ import annotations

import argparse

HELP = "identity, prompt fidelity and face-detection rate of images"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from subjectgen_training.evaluation.clip_score import DEFAULT_CLIP_MODEL

    parser.add_argument("--images", required=True, help="folder of generated images (with generate's manifest.jsonl)")
    parser.add_argument("--reference", required=True, help="folder of reference photos of the subject")
    parser.add_argument("--out", required=True, help="results.json to write")
    parser.add_argument("--face-model", default="dlib",
                        help="identity encoder: dlib (offline, default), arcface (insightface), toy, or none")
    parser.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL,
                        help=f"CLIP Hub id, local folder or builtin:tiny-clip (default {DEFAULT_CLIP_MODEL}; e.g. "
                             "openai/clip-vit-large-patch14), or none to skip the CLIP scores")
    parser.add_argument("--prompt-scorer", default="clip",
                        help="prompt score: clip (CLIP-T/CLIP-I, default), toy (the toy world's pixel rules), or none")
    parser.add_argument("--subject-phrase", default="a person",
                        help="what replaces {} in each prompt for the CLIP text score (default: 'a person')")
    parser.add_argument("--device", default=None, help="torch device for CLIP (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    from subjectgen_training.config_flags import namespace_values
    from subjectgen_training.evaluation import EvaluateConfig, evaluate_images, read_results
    from subjectgen_training.report import format_summary_line

    config = EvaluateConfig(**namespace_values(args, EvaluateConfig))
    path = evaluate_images(config)
    results = read_results(path)
    print(format_summary_line(results["summary"]["overall"]))
    print(results["protocol"])
    print(f"wrote {path}")
    return 0
