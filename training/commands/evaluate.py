"""``subjectgen evaluate``: identity, prompt fidelity and face-detection rate of a folder of images; the flags are
:class:`subjectgen_training.evaluation.EvaluateConfig`'s fields."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from subjectgen_training.config_flags import add_config_arguments
    from subjectgen_training.evaluation.evaluate import EvaluateConfig

    add_config_arguments(parser, EvaluateConfig)


def run(args: argparse.Namespace) -> int:
    from subjectgen_training.config_flags import config_from_args
    from subjectgen_training.evaluation import evaluate_images, read_results
    from subjectgen_training.evaluation.evaluate import EvaluateConfig
    from subjectgen_training.experiment.report import format_summary_line

    path = evaluate_images(config_from_args(args, EvaluateConfig))
    results = read_results(path)
    print(format_summary_line(results["summary"]["overall"]))
    print(results["protocol"])
    print(f"wrote {path}")
    return 0
