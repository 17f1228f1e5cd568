"""``subjectgen demo [--out DIR]``: the whole path offline, in about a minute, on the built-in tiny model.

Sample photos of a real person (scikit-image's astronaut: crops, mirror images, small rescales) are prepared (face
crops + masks), a CD+CR subject is trained for a few steps on ``builtin:tiny-sd``, sampled over a few prompts,
evaluated (face detection and dlib identity; no CLIP, which would need the Hub) and reported. It is the experiment
runner with one subject and one setup, so the output folder looks like a real experiment's and a rerun resumes.
"""

from __future__ import annotations

import argparse

HELP = "the whole path offline on the built-in tiny model and sample photos"
DEMO_PROMPTS = "a photo of {} | a close-up photo of {} laughing | a pencil sketch of {} | a photo of {} wearing a red baseball cap"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="subjectgen-demo", help="output folder (default: ./subjectgen-demo)")
    parser.add_argument("--steps", type=int, default=20, help="training steps (default 20)")


def demo_config(steps: int = 20):
    """The demo as an experiment config: one subject, one setup (CD+CR), the tiny built-in model."""
    from training.experiment.config import (EvaluationSpec, ExperimentConfig, GenerationSpec, SetupSpec,
                                            SubjectSpec)

    return ExperimentConfig(
        name="subjectgen demo",
        description="CD+CR on the built-in tiny model (random weights: the pictures are noise, the path is real). "
                    "For real results run the same steps on Stable Diffusion 1.5 with a GPU (see README).",
        base="builtin:tiny-sd",
        subjects=[SubjectSpec(name="astronaut", photos="builtin:astronaut", prepare=True)],
        setups=[SetupSpec(name="cd+cr", method="cd+cr",
                          description="Cross-Initialised tokens + Custom Diffusion deltas, no regularisation")],
        train={"resolution": 64, "steps": steps, "batch_size": 2, "lr": 1e-3, "token_lr": 0.05, "rescale_variants": 1,
               "checkpoint_every": max(1, steps // 2)},
        generate=GenerationSpec(prompts=DEMO_PROMPTS, num_per_prompt=2, steps=10, batch_size=8),
        evaluate=EvaluationSpec(face_model="dlib", clip_model="none"),
    )


def run(args: argparse.Namespace) -> int:
    from training.experiment import run_experiment
    from training.sample_photos import astronaut_image

    astronaut_image()  # fails early, naming scikit-image, when it is missing
    summary = run_experiment(demo_config(args.steps), args.out)
    out = summary.parent.resolve()
    run_dir = out / "runs" / "astronaut" / "cd+cr"
    print("\ndone. Look at:")
    print(f"  report (open in a browser): {out / 'report.html'}")
    print(f"  scores table:               {out / 'summary.md'}")
    print(f"  the trained subject:        {run_dir / 'subject'}")
    print(f"  generated images:           {run_dir / 'images'}")
    print(f"  prepared photos:            {out / 'subjects' / 'astronaut' / 'photos' / 'prepared'}")
    print("On a GPU with Stable Diffusion 1.5: subjectgen experiment five_setups --out runs/five_setups")
    return 0
