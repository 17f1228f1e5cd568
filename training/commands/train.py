"""``subjectgen train``: a thin command line over :func:`training.trainer.train`.

Flags mirror :class:`training.train_config.TrainConfig`; ``--config FILE`` (YAML/TOML/JSON) gives the same fields
and flags given on the command line override it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

HELP = "train a subject: Custom Diffusion, Cross Initialization or both"


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


NONE_MEANS = {"lr": "unused", "token_lr": "the --lr value", "cd_scope": "unused",
              "init_word": "unused (cross-initialised)"}  # what a method's None recipe value stands for


def _default(field: str) -> str:
    """The default a flag gets, as its help says it: the method's recipe value per method, or the config's."""
    import dataclasses

    from training.methods import REGISTRY
    from training.train_config import TrainConfig

    def text(value) -> str:
        if value is None:
            return NONE_MEANS.get(field, "none")
        return ("on" if value else "off") if isinstance(value, bool) else str(value)

    per_method = {name: text(method.defaults[field]) for name, method in REGISTRY.items() if field in method.defaults}
    if per_method:
        if len(set(per_method.values())) == 1:
            return f"method default: {next(iter(per_method.values()))}"
        return "method default: " + ", ".join(f"{name} {value}" for name, value in per_method.items())
    return f"default: {text({f.name: f.default for f in dataclasses.fields(TrainConfig)}[field])}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from subjectgen_diffusers.methods import CD_SCOPES
    from training.methods import REGISTRY

    def add(flag: str, *, help: str, default_text: str | None = None, **kwargs) -> None:
        field = flag.lstrip("-").replace("-", "_")
        shown = default_text if default_text is not None else _default(field)
        # argparse's own default stays None: a flag only overrides the config file when it is given
        kwargs.setdefault("default", None)
        parser.add_argument(flag, help=f"{help} ({shown})".replace("%", "%%"), **kwargs)

    add("--config", help="YAML/TOML/JSON file with the same fields; flags override it", default_text="default: none")
    add("--base", help="Stable Diffusion 1.x: a local diffusers folder or a Hub id",
        default_text="required, here or in --config")
    add("--photos", action="append", help="folder of 4-20 photos of the person (or a `subjectgen prepare` output); "
        "fewer than 4 trains but warns. Repeat it with one --token each to train several people jointly (one set of "
        "deltas, one token per person)", default_text="required, here or in --config")
    add("--method", choices=list(REGISTRY), help="; ".join(f"{name}: {m.info.title}" for name, m in REGISTRY.items()),
        default_text="required, here or in --config")
    add("--out", help="output folder for the subject (created; must not be a file); checkpoints go beside it in "
        "<out>.checkpoints/", default_text="required, here or in --config")
    add("--token", action="append", help="the new token string (one per --photos in a joint run)",
        default_text="default: <new1>")
    add("--reg-dir", help="regularisation images for prior preservation", default_text="default: none, no prior "
        "preservation")
    add("--steps", type=int, help="optimizer steps")
    add("--resolution", type=int, help="training image side in pixels, a multiple of 8",
        default_text="default: the base model's native size, e.g. 512 for SD 1.5, 32 for the shipped toy model")
    add("--batch-size", type=int, help="photos per step (plus as many class images with --reg-dir)")
    add("--lr", type=float, help="rate of the Custom Diffusion weight deltas (cd, cd+cr), before --scale-lr")
    add("--token-lr", type=float, help="rate of the new token vectors (every method), before --scale-lr")
    add("--scale-lr", action=argparse.BooleanOptionalAction,
        help="multiply the rates by the method's reference rule; --no-scale-lr uses them as given")
    add("--use-8bit-adam", action="store_const", const=True, help="bitsandbytes' 8-bit AdamW (needs a CUDA GPU)")
    add("--max-grad-norm", type=float, help="gradient clipping norm, 0 = none")
    add("--seed", type=int, help="seed of every random draw (photos, noise, timesteps)")
    add("--prior-loss-weight", type=float, help="weight of the regularisation images' loss")
    add("--cd-scope", choices=list(CD_SCOPES), help="which attention projections Custom Diffusion trains")
    add("--num-vectors", type=int, help="embedding vectors of the new token")
    add("--reg-weight", type=float, help="Cross Initialization's L2 pull of the token towards its start")
    add("--celeb-names", help="replace the packaged celebrity-name list (one name per line) of Cross Initialization",
        default_text="default: the packaged list")
    add("--init-word", help="word whose embedding starts the token when it is not cross-initialised")
    add("--prompt", help='instance prompt with {} for the token, e.g. "photo of a {} person"')
    add("--class-prompt", help="prompt of regularisation images that have no caption of their own")
    add("--flip-p", type=float, help="probability of a horizontally flipped photo")
    add("--random-rescale", type=_bool, metavar="BOOL", help="Custom Diffusion's zoom in/out augmentation")
    add("--mask-loss", action="store_const", const=True, help="weight the loss by prepared face masks")
    add("--mixed-precision", choices=["no", "fp16", "bf16"], help="autocast dtype (fp16 needs a CUDA GPU)")
    add("--gradient-checkpointing", action="store_const", const=True,
        help="recompute activations in the backward pass: less memory, slower")
    add("--checkpoint-every", type=int, help="steps between resumable checkpoints, 0 = none")
    add("--checkpoints-total-limit", type=int, help="keep the last K checkpoints")
    add("--resume", action="store_const", const=True, help="continue from the latest checkpoint in <out>.checkpoints/")
    add("--keep-checkpoints", action="store_const", const=True,
        help="keep <out>.checkpoints/ after a finished run instead of deleting it")
    add("--validation-every", type=int, help="steps between validation images (in <out>/validation/), 0 = none")
    add("--validation-prompt", help="prompt of the validation images", default_text="default: the instance prompt")
    add("--log-with", choices=["tensorboard"], help="write training logs under <out>/logs", default_text="default: none")
    add("--revision", help="Hub revision (branch, tag or commit) of --base", default_text="default: main")
    add("--save-rank", type=int, metavar="R",
        help="store the weight deltas as rank-R factors (see `subjectgen compress`; 16 kept toy likeness within 0.01)",
        default_text="default: none, exact deltas")


FIELDS = (
    "base", "photos", "method", "out", "token", "reg_dir", "steps", "resolution", "batch_size", "lr", "token_lr",
    "scale_lr", "use_8bit_adam", "max_grad_norm", "save_rank",
    "seed", "prior_loss_weight", "cd_scope", "num_vectors", "reg_weight", "celeb_names", "init_word", "prompt",
    "class_prompt", "flip_p", "random_rescale", "mask_loss", "mixed_precision", "gradient_checkpointing",
    "checkpoint_every", "checkpoints_total_limit", "resume", "keep_checkpoints", "validation_every",
    "validation_prompt", "log_with", "revision",
)


def people_from_flags(photos: list[str] | None, tokens: list[str] | None) -> dict:
    """Repeated ``--photos A/ --photos B/ --token <a> --token <b>``: the ``subjects`` of a joint run; once each:
    ``photos`` and ``token``."""
    from training.train_config import TrainConfigError

    photos, tokens = photos or [], tokens or []
    if len(photos) <= 1 and len(tokens) <= 1:
        return {key: value[0] for key, value in (("photos", photos), ("token", tokens)) if value}
    if len(photos) != len(tokens):
        raise TrainConfigError(f"a joint run pairs each --photos with its own --token; got {len(photos)} --photos "
                               f"and {len(tokens)} --token.")
    return {"subjects": [{"photos": folder, "token": token} for folder, token in zip(photos, tokens)]}


def config_from_args(args: argparse.Namespace):
    from training.train_config import TrainConfig

    flags = {name: getattr(args, name) for name in FIELDS if getattr(args, name, None) is not None}
    flags.update(people_from_flags(flags.pop("photos", None), flags.pop("token", None)))
    if args.config:
        return TrainConfig.from_file(args.config, **flags)
    return TrainConfig.from_dict(flags)


def run(args: argparse.Namespace) -> int:
    import os

    from training.checkpoints import checkpoint_dir, list_checkpoints
    from training.trainer import train

    config = config_from_args(args)
    if config.resume and os.environ.get("RANK", "0") == "0" and not list_checkpoints(Path(config.out)):
        logger.info("--resume: no checkpoint in %s; starting from step 0", checkpoint_dir(Path(config.out)))
    out = train(config)
    if os.environ.get("RANK", "0") == "0":  # one line, not one per process
        print(f"subject written to {out}")
    return 0
