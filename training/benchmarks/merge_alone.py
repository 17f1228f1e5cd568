"""Where a constrained merge loses likeness: merge a subject with only the *tokens* of another (no deltas, so nothing
interferes), then sample and score it exactly as the ``compose`` experiment does.

    python -m subjectgen_training.benchmarks.merge_alone --run runs/compose --subject face-b --partner face-a

``--run`` is a finished ``subjectgen experiment compose_toy`` folder (its experiment.json, trained subjects and photos
are reused). Prints the subject's likeness / prompt-following alone (from the run) and after this merge; the gap is
what the constraint itself costs (training/toy/README.md, "Several faces in one pipeline").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path


def token_only(subject):
    """The subject's tokens without its deltas (a Cross Initialization subject with the same vectors)."""
    from subjectgen_diffusers.subject_format import Subject, SubjectConfig

    config = subject.config
    return Subject(SubjectConfig(method="cr", token=config.token, num_vectors=config.num_vectors,
                                 text_hidden_size=config.text_hidden_size, base_model=config.base_model,
                                 extra_tokens=dict(config.extra_tokens), training=config.training),
                   subject.token_embeddings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished compose experiment folder")
    parser.add_argument("--subject", required=True, help="the subject to score")
    parser.add_argument("--partner", required=True, help="the subject whose tokens only join the merge")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: <run>/merge-alone/<subject>)")
    args = parser.parse_args(argv)

    from diffusers import StableDiffusionPipeline

    from subjectgen_diffusers.merge import merge_subjects
    from subjectgen_diffusers.subject_format import Subject
    from subjectgen_training.models.builtin_models import resolve_model
    from subjectgen_training.prompts import class_phrases
    from subjectgen_training.evaluation import EvaluateConfig, evaluate_images
    from subjectgen_training.experiment.config import _build, ExperimentConfig
    from subjectgen_training.sampling.generate import GenerateConfig, generate_images
    from subjectgen_training.prompts import regularization_captions

    config = _build(ExperimentConfig, json.loads((args.run / "experiment.json").read_text()), "experiment.json")
    setup = config.compose.setup
    out = args.out or args.run / "merge-alone" / args.subject
    base = resolve_model(config.base, args.run / "builtin-models")
    subject = Subject.load(args.run / "runs" / args.subject / setup / "subject")
    partner = token_only(Subject.load(args.run / "runs" / args.partner / setup / "subject"))
    merged = out / "merged"
    if not merged.exists():
        pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, feature_extractor=None,
                                                       requires_safety_checker=False)
        captions = regularization_captions(class_phrases([subject], None))
        merge_subjects(pipe, [subject, partner], regularization_captions=captions, out=merged)
    generation = dataclasses.asdict(config.generate)
    generation["prompts"] = config.prompt_spec()
    generate_images(GenerateConfig(base=base, subject=str(merged), out=str(out / "images"), token=subject.config.token,
                                   **generation))
    photos = args.run / "subjects" / args.subject / "photos" / "original"
    evaluate_images(EvaluateConfig(images=str(out / "images"), reference=str(photos), out=str(out / "results.json"),
                                   **dataclasses.asdict(config.evaluate)))
    summary = json.loads((args.run / "summary.json").read_text())
    alone = summary["rows"][args.subject]["alone"] if args.subject in summary["rows"] else None
    overall = json.loads((out / "results.json").read_text())["summary"]["overall"]
    print(f"{args.subject}: alone {alone}; merged with the tokens of {args.partner} only: likeness "
          f"{overall['identity']['mean']:.3f}, prompt-following {overall['prompt_following']['mean']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
