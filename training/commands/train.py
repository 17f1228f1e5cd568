"""``subjectgen train``: a thin command line over :func:`training.trainer.train`.

Flags mirror :class:`training.train_config.TrainConfig`; ``--config FILE`` (YAML/TOML/JSON) gives the same fields
and flags given on the command line override it.
"""

from __future__ import annotations

import argparse

HELP = "train a subject: Custom Diffusion, Cross Initialization or both"


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from subjectgen_diffusers.methods import CD_SCOPES
    from training.methods import REGISTRY

    add = parser.add_argument
    add("--config", help="YAML/TOML/JSON file with the same fields; flags override it")
    add("--base", help="Stable Diffusion 1.x: a local diffusers folder or a Hub id")
    add("--photos", help="folder of 4-20 photos of the person (or a `subjectgen prepare` output)")
    add("--method", choices=list(REGISTRY), help="; ".join(f"{name}: {m.info.title}" for name, m in REGISTRY.items()))
    add("--out", help="output folder for the subject")
    add("--token", help="the new token string (default <new1>)")
    add("--reg-dir", help="regularisation images for prior preservation")
    add("--steps", type=int)
    add("--resolution", type=int)
    add("--batch-size", type=int)
    add("--lr", type=float, help="rate of the Custom Diffusion weight deltas (cd, cd+cr), before --scale-lr")
    add("--token-lr", type=float, help="rate of the new token vectors (every method), before --scale-lr")
    add("--scale-lr", action=argparse.BooleanOptionalAction, default=None,
        help="multiply the rates by the method's reference rule (default on); --no-scale-lr uses them as given")
    add("--use-8bit-adam", action="store_const", const=True, default=None,
        help="bitsandbytes' 8-bit AdamW (needs a CUDA GPU); off by default as in the references")
    add("--max-grad-norm", type=float, help="gradient clipping norm, 0 = none (default: cd 1.0, cr none)")
    add("--seed", type=int)
    add("--prior-loss-weight", type=float)
    add("--cd-scope", choices=list(CD_SCOPES))
    add("--num-vectors", type=int)
    add("--reg-weight", type=float, help="Cross Initialization's L2 pull to the start")
    add("--celeb-names", help="replace the packaged celebrity-name list (one name per line)")
    add("--init-word")
    add("--prompt", help='instance prompt with {} for the token, e.g. "photo of a {} person"')
    add("--class-prompt")
    add("--flip-p", type=float)
    add("--random-rescale", type=_bool, metavar="BOOL")
    add("--mask-loss", action="store_const", const=True, default=None, help="weight the loss by prepared face masks")
    add("--mixed-precision", choices=["no", "fp16", "bf16"])
    add("--gradient-checkpointing", action="store_const", const=True, default=None)
    add("--checkpoint-every", type=int, help="steps between resumable checkpoints")
    add("--checkpoints-total-limit", type=int, help="keep the last K checkpoints")
    add("--resume", action="store_const", const=True, default=None, help="continue from the latest checkpoint")
    add("--validation-every", type=int, help="steps between validation images")
    add("--validation-prompt")
    add("--log-with", choices=["tensorboard"])
    add("--revision")
    add("--save-rank", type=int, metavar="R",
        help="store the weight deltas as rank-R factors (see `subjectgen compress`; 16 kept toy likeness within 0.01)")


FIELDS = (
    "base", "photos", "method", "out", "token", "reg_dir", "steps", "resolution", "batch_size", "lr", "token_lr",
    "scale_lr", "use_8bit_adam", "max_grad_norm", "save_rank",
    "seed", "prior_loss_weight", "cd_scope", "num_vectors", "reg_weight", "celeb_names", "init_word", "prompt",
    "class_prompt", "flip_p", "random_rescale", "mask_loss", "mixed_precision", "gradient_checkpointing",
    "checkpoint_every", "checkpoints_total_limit", "resume", "validation_every", "validation_prompt", "log_with",
    "revision",
)


def config_from_args(args: argparse.Namespace):
    from training.train_config import TrainConfig

    flags = {name: getattr(args, name) for name in FIELDS if getattr(args, name, None) is not None}
    if args.config:
        return TrainConfig.from_file(args.config, **flags)
    return TrainConfig.from_dict(flags)


def run(args: argparse.Namespace) -> int:
    from training.trainer import train

    import os

    out = train(config_from_args(args))
    if os.environ.get("RANK", "0") == "0":  # one line, not one per process
        print(f"subject written to {out}")
    return 0
