"""``subjectgen train``: a thin command line over :func:`subjectgen_training.trainer.loop.train`.

The flags are generated from :class:`subjectgen_training.trainer.config.TrainConfig`'s field definitions (help text, kind and
default note live with each field; :mod:`subjectgen_training.config_flags`); ``--config FILE`` (YAML/TOML/JSON) gives the same
fields and flags given on the command line override it.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` plus one flag per :class:`TrainConfig` field, then one group per method with the fields of its
    own config dataclass (a field two methods share is a flag once), generated from the fields' own definitions."""
    import dataclasses

    from subjectgen_training.config_flags import add_config_arguments
    from subjectgen_training.methods import REGISTRY, describe_default
    from subjectgen_training.trainer.config import TrainConfig

    parser.add_argument("--config", default=None,
                        help="YAML/TOML/JSON file with the same fields; flags override it (default: none)")
    added = {spec.name for spec in add_config_arguments(parser, TrainConfig, describe_default)}
    for name, method in REGISTRY.items():
        fields = [f.name for f in dataclasses.fields(method.options)]
        flags = ", ".join("--" + field.replace("_", "-") for field in fields) or "none"
        group = parser.add_argument_group(f"method {name} ({method.info.title})", f"its own fields: {flags}")
        added |= {spec.name for spec in add_config_arguments(group, method.options, describe_default, skip=added)}


def people_from_flags(photos: list[str] | None, tokens: list[str] | None) -> dict:
    """Repeated ``--photos A/ --photos B/ --token <a> --token <b>``: the ``subjects`` of a joint run; once each:
    ``photos`` and ``token``."""
    from subjectgen_training.trainer.config import TrainConfigError

    photos, tokens = photos or [], tokens or []
    if len(photos) <= 1 and len(tokens) <= 1:
        return {key: value[0] for key, value in (("photos", photos), ("token", tokens)) if value}
    if len(photos) != len(tokens):
        raise TrainConfigError(f"a joint run pairs each --photos with its own --token; got {len(photos)} --photos "
                               f"and {len(tokens)} --token.")
    return {"subjects": [{"photos": folder, "token": token} for folder, token in zip(photos, tokens)]}


def config_from_args(args: argparse.Namespace):
    """Flags over ``--config`` over the base's recipe: on a built-in toy base (``builtin:toy-base``) the toy world's
    recipe (:mod:`subjectgen_training.toy.recipe`, printed), elsewhere each method's published recipe (in ``resolved``)."""
    from subjectgen_training.models.builtin_models import is_toy_base
    from subjectgen_training.config_flags import config_values
    from subjectgen_training.trainer.config import DEFAULT_METHOD, TrainConfig, method_fields

    flags = config_values(args, TrainConfig)
    flags.update({name: getattr(args, name) for name in method_fields() if getattr(args, name, None) is not None})
    # --photos / --token are repeatable: once each is one person, N pairs are a joint run's `subjects`
    as_list = lambda value: value if isinstance(value, list) or value is None else [value]  # noqa: E731
    flags.update(people_from_flags(as_list(flags.pop("photos", None)), as_list(flags.pop("token", None))))
    data = TrainConfig.read_config_file(args.config) if args.config else {}
    data.update({key: value for key, value in flags.items() if value is not None})
    if is_toy_base(data.get("base")):
        from subjectgen_training.toy.recipe import SOURCE, with_toy_recipe

        method = data.get("method") or DEFAULT_METHOD
        data, used = with_toy_recipe(data, method)
        if used and os.environ.get("RANK", "0") == "0":
            listed = ", ".join(f"{key} {value}" for key, value in used.items())
            print(f"{data['base']}: the toy world's {method} recipe (training/configs/{SOURCE}.yaml, as `subjectgen "
                  f"demo` trains), where no flag or --config key says otherwise: {listed}", flush=True)
    return TrainConfig.from_dict(data)


def interrupted_message(args: argparse.Namespace) -> str:
    """What Ctrl-C leaves and what running again does: a stopped run continues only with --resume."""
    from subjectgen_training.trainer.checkpoints import checkpoint_dir, checkpoint_step, list_checkpoints

    out = getattr(args, "resolved_out", None) or args.out
    if not out:
        return "interrupted."
    found = list_checkpoints(Path(out))
    if found:
        return (f"interrupted: the checkpoints are kept in {checkpoint_dir(Path(out))} (latest: step "
                f"{checkpoint_step(found[-1])}); run the same command with --resume to continue from there "
                "(--restart starts again from step 0).")
    return ("interrupted before the first checkpoint (--checkpoint-every N writes them): nothing to resume; running "
            "the same command starts again from step 0.")


def run(args: argparse.Namespace) -> int:
    from subjectgen_training.trainer.checkpoints import checkpoint_dir, list_checkpoints
    from subjectgen_training.trainer.loop import train

    config = config_from_args(args)
    args.resolved_out = config.out  # for interrupted_message when --out came from --config
    if config.resume and os.environ.get("RANK", "0") == "0" and not list_checkpoints(Path(config.out)):
        logger.info("--resume: no checkpoint in %s; starting from step 0", checkpoint_dir(Path(config.out)))
    out = train(config)
    if os.environ.get("RANK", "0") == "0":  # one line, not one per process
        print(f"subject written to {out}")
    return 0
