"""The toy world's training recipe: what ``subjectgen train`` defaults to on a built-in toy base instead of SD 1.5's.

SD 1.5's published recipes (1000 steps at 5e-6, scaled) teach the 15 MB toy model nothing in a CPU-sized run; the
toy world's rates were tuned on its own subjects (``training/configs/five_setups_toy.yaml``, README "Toy world"). The
recipe is read from that file, the one the demo and the toy experiments use: its shared ``train:`` block plus the
``train:`` block of its first setup of the chosen method. Flags and ``--config`` keys override any of it.
"""

from __future__ import annotations

from typing import Any

SOURCE = "five_setups_toy"
CHECKPOINTS_PER_RUN = 10  # a checkpoint every tenth of the steps, so a stopped run can --resume (as the web UI)


def toy_train_recipe(method: str) -> dict[str, Any]:
    """The TrainConfig values of the toy recipe for ``method`` (no checkpoint interval: see :func:`with_toy_recipe`)."""
    from subjectgen_training.experiment.config import load_experiment_config

    config = load_experiment_config(SOURCE)
    setup = next((s for s in config.setups if s.method == method), None)
    return {**config.train, **(setup.train if setup else {})}


def with_toy_recipe(given: dict[str, Any], method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``given`` (file keys and flags) over the toy recipe; returns the merged values and the recipe values used."""
    recipe = toy_train_recipe(method)
    used = {key: value for key, value in recipe.items() if given.get(key) is None}
    merged = {**given, **used}
    if given.get("checkpoint_every") is None:
        used["checkpoint_every"] = merged["checkpoint_every"] = max(1, int(merged.get("steps") or 1) // CHECKPOINTS_PER_RUN)
    return merged, used
