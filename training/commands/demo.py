"""``subjectgen demo [--out DIR]``: the whole path offline, in about a minute, on the shipped toy base model.

The toy world's subject (a cartoon face whose traits and hidden mark its captions never name) is photographed six
times; a CD+CR subject (with regularisation images from the base) is trained on ``toy-base`` (an SD-architecture model trained on that world, shipped in the
package), drawn in new scenes (other backgrounds, a hat, glasses) next to the untrained baseline, scored by the toy
likeness and prompt-following, and reported. It is the one experiment runner with one setup, so a rerun resumes.

``--real-photos`` runs the path for real photos instead: sample photos of a person (scikit-image's astronaut) are
prepared (face crops + masks), trained on ``builtin:tiny-sd`` (random weights: the pictures are noise, the path is
real) and evaluated with dlib face identity.
"""

from __future__ import annotations

import argparse

HELP = "the whole path offline: the shipped toy model learns a subject (or --real-photos on a tiny random model)"
OUT_IS_FOLDER = True  # cli.check_out_is_folder refuses an existing file there
DEMO_PROMPTS = "a photo of {} | a close-up photo of {} laughing | a pencil sketch of {} | a photo of {} wearing a red baseball cap"
TOY_PROMPTS = ("{}, on a yellow background", "{}, on a purple background", "{}, wearing a hat, on a purple background",
               "{}, wearing glasses, on a yellow background")  # the new scenes of five_setups_toy


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="subjectgen-demo", help="output folder (default: ./subjectgen-demo)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps (default 150 on the toy model, 20 with --real-photos)")
    parser.add_argument("--base", default=None,
                        help="the toy base model the demo trains on: builtin:toy-base (default, Stable Diffusion "
                             "architecture) or builtin:toy-xl-base (SDXL architecture); the model family follows "
                             "from the base")
    parser.add_argument("--real-photos", action="store_true",
                        help="prepare and train on sample photos of a real person with the tiny random-weight model")


def toy_demo_config(steps: int = 150, base: str = "builtin:toy-base"):
    """The toy demo as an experiment config: the shipped subject, CD+CR with 16 regularisation images from the base,
    the four new scenes of ``five_setups_toy`` (backgrounds its photos never show, a hat, glasses), four seeds.
    ``base``: a shipped toy base; everything that depends on its architecture follows from the base's model family."""
    from subjectgen_training.experiment.config import (EvaluationSpec, ExperimentConfig, GenerationSpec, RegularizationSpec,
                                            SetupSpec, SubjectSpec)

    return ExperimentConfig(
        name="subjectgen demo (toy world)",
        description="CD+CR learns a toy-world face whose traits and hidden mark its captions never name, on the "
                    "shipped toy base model, and draws it in scenes its photos never show.",
        base=base,
        subjects=[SubjectSpec(name="shipped", photos="toy:shipped")],
        regularizations={"base": RegularizationSpec(model=base, prompt="a cartoon face", num=16,
                                                    steps=20, guidance=4.0, resolution=32, batch_size=16)},
        setups=[SetupSpec(name="cd+cr-reg", method="cd+cr", regularization="base",
                          description="Cross-Initialised tokens + Custom Diffusion deltas, with regularisation",
                          train={"steps": steps, "lr": 2e-3, "token_lr": 4e-2, "batch_size": 4, "reg_weight": 8e-5,
                                 "checkpoint_every": max(1, steps // 2)})],
        # scale_lr off: the toy world's rates are chosen directly, as used (training/configs/five_setups_toy.yaml)
        # prior weight, clipping and CR's pull x8: the toy's 8 latent channels (training/configs/five_setups_toy.yaml)
        train={"scale_lr": False, "prior_loss_weight": 8.0, "max_grad_norm": 8.0, "resolution": 32, "flip_p": 0.0,
               "random_rescale": False, "caption_templates": False,
               "prompt": "a {} cartoon face", "class_prompt": "a cartoon face", "seed": 0},
        generate=GenerationSpec(prompts=list(TOY_PROMPTS), num_per_prompt=4, seed=1000, steps=20, guidance=4.0,
                                resolution=32, batch_size=16, subject_phrase="a {} cartoon face",
                                class_phrase="a cartoon face"),
        evaluate=EvaluationSpec(face_model="toy", prompt_scorer="toy", subject_phrase="a cartoon face"),
    )


def demo_config(steps: int = 20):
    """The real-photos demo as an experiment config: one subject, one setup (CD+CR), the tiny built-in model."""
    from subjectgen_training.experiment.config import (EvaluationSpec, ExperimentConfig, GenerationSpec, SetupSpec,
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


def run_real_photos(args: argparse.Namespace) -> int:
    from subjectgen_training.experiment import run_experiment
    from subjectgen_training.sample_photos import astronaut_image

    astronaut_image()  # fails early, naming scikit-image, when it is missing
    summary = run_experiment(demo_config(args.steps or 20), args.out)
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


def run_toy(args: argparse.Namespace) -> int:
    from subjectgen_diffusers.errors import SubjectgenError
    from subjectgen_training.experiment import run_experiment
    from subjectgen_training.builtin_models import TOY_BASES, builtin_name
    from subjectgen_training.toy.models import WEIGHTS, has_weights

    base = args.base or "builtin:toy-base"
    name = builtin_name(base)
    if name not in TOY_BASES:
        raise SubjectgenError(f"--base {base}: the demo runs on a shipped toy base, one of "
                              f"{', '.join('builtin:' + b for b in TOY_BASES)}.")
    if not has_weights(name):
        raise SubjectgenError(f"the toy base model {name} is missing from {WEIGHTS}; reinstall the package or train it "
                              "with `python -m subjectgen_training.toy.train_base` (training/toy/README.md), or run "
                              "`subjectgen demo --real-photos`.")
    summary = run_experiment(toy_demo_config(args.steps or 150, base), args.out)
    out = summary.parent.resolve()
    run_dir = out / "runs" / "shipped" / "cd+cr-reg"
    print((out / "summary.md").read_text(encoding="utf-8"))
    print("done. Look at:")
    print(f"  report (open in a browser): {out / 'report.html'}")
    print(f"  the subject's photos:       {out / 'subjects' / 'shipped' / 'photos' / 'original'}")
    print(f"  the trained subject:        {run_dir / 'subject'}")
    print(f"  its new scenes:             {run_dir / 'images'}  (baseline: {out / 'runs' / 'shipped' / 'baseline' / 'images'})")
    print("All five setups in this world: subjectgen experiment five_setups_toy --out runs/toy")
    print("On a GPU with Stable Diffusion 1.5: subjectgen experiment five_setups --out runs/five_setups")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.real_photos and args.base:
        from subjectgen_diffusers.errors import SubjectgenError

        raise SubjectgenError("--base chooses the toy base; --real-photos always runs on builtin:tiny-sd. Drop one.")
    return run_real_photos(args) if args.real_photos else run_toy(args)
