"""The demos as experiment configs (``subjectgen demo`` and the web page's toy presets read them): the toy world's
subject learned on the shipped toy base, and the real-photos path on the tiny random-weight model."""

from __future__ import annotations

DEMO_PROMPTS = "a photo of {} | a close-up photo of {} laughing | a pencil sketch of {} | a photo of {} wearing a red baseball cap"
TOY_PROMPTS = ("{}, on a yellow background", "{}, on a purple background", "{}, wearing a hat, on a purple background",
               "{}, wearing glasses, on a yellow background")  # the new scenes of five_setups_toy


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
