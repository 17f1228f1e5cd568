"""Personalisation methods, registered by name. A method is a token initialiser (with its optional extra loss)
plus, for Custom Diffusion, the weight deltas; the training loop only talks to these parts and never branches on
the method's name.

- ``cd``: Custom Diffusion (Kumari et al., CVPR 2023): word-initialised modifier token + cross-attention deltas.
- ``cr``: Cross Initialization (Pang et al., CVPR 2024): cross-initialised tokens + L2 pull to the start.
- ``cd+cr``: both, each with its own learning rate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from training.methods.cross_init import CrossInitTokens
from training.methods.custom_diffusion import CustomDiffusionDeltas
from training.methods.word_init import WordInitTokens
from training.train_config import TrainConfig


@dataclass
class Method:
    name: str
    tokens: WordInitTokens | CrossInitTokens
    deltas: CustomDiffusionDeltas | None = None

    def describe(self) -> dict[str, Any]:
        info = {"method": self.name, **self.tokens.describe()}
        if self.deltas is not None:
            info.update(self.deltas.describe())
        return info


REGISTRY: dict[str, Callable[[TrainConfig], Method]] = {
    "cd": lambda c: Method("cd", WordInitTokens(c.init_word or "ktn"), CustomDiffusionDeltas(c.cd_scope)),
    "cr": lambda c: Method("cr", CrossInitTokens(c.reg_weight, c.celeb_names)),
    "cd+cr": lambda c: Method("cd+cr", CrossInitTokens(c.reg_weight, c.celeb_names), CustomDiffusionDeltas(c.cd_scope)),
}


def build_method(config: TrainConfig) -> Method:
    """The method parts for a *resolved* config."""
    return REGISTRY[config.method](config)
