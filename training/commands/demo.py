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

OUT_IS_FOLDER = True  # cli.check_out_is_folder refuses an existing file there


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


def run_real_photos(args: argparse.Namespace) -> int:
    from subjectgen_training.data.sample_photos import astronaut_image
    from subjectgen_training.experiment import run_experiment
    from subjectgen_training.experiment.demos import demo_config

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
    from subjectgen_training.experiment.demos import toy_demo_config
    from subjectgen_training.models.builtin_models import TOY_BASES, builtin_name
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
