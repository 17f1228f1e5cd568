"""Personalisation methods, registered by name. Each method is one module holding one :class:`Method` subclass
(its recipe, rate rule, what it trains, its token start, extra loss and subject contents); the trainer, the
``--method`` choices, the config defaults, the subject format and the Hub card all read this registry.

Adding a method (say DreamBooth-LoRA) means one new module -- its :class:`Method` subclass and, for fields of its own,
an ``options`` dataclass (:func:`subjectgen_training.config_flags.option` fields: the CLI shows them as the method's
group, the web page when the method is chosen) -- plus one ``register(...)`` line below; a method whose subjects hold
something other than token rows and Custom Diffusion deltas also needs the plugin to read it.

- ``cd``: Custom Diffusion (Kumari et al., CVPR 2023), :mod:`subjectgen_training.methods.cd`.
- ``cr``: Cross Initialization (Pang et al., CVPR 2024), :mod:`subjectgen_training.methods.cr`.
- ``cd+cr``: both, each part with its own recipe, :mod:`subjectgen_training.methods.cd_cr`.
"""

from __future__ import annotations

from subjectgen_diffusers.methods import register_method_info
from subjectgen_training.methods.base import Method, MethodConfigError

REGISTRY: dict[str, type[Method]] = {}


def register(method: type[Method]) -> type[Method]:
    """Register a method class under its name (and its subject-format entry in the plugin's table)."""
    register_method_info(method.info)
    REGISTRY[method.info.name] = method
    return method


def method_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get_method(name: str) -> type[Method]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise MethodConfigError(f"method must be one of {list(REGISTRY)}, got {name!r}.") from None


def build_method(config) -> Method:
    """The method object for a *resolved* config."""
    return get_method(config.method)(config)


NONE_MEANS = {"lr": "unused", "token_lr": "the --lr value", "cd_scope": "unused",
              "init_word": "unused (cross-initialised)"}  # what a method's None recipe value stands for


def describe_default(spec) -> str:
    """The default a flag gets, as its help says it: the method's recipe value per method, or the config's."""
    def text(value) -> str:
        if value is None:
            return NONE_MEANS.get(spec.name, "none")
        return ("on" if value else "off") if isinstance(value, bool) else str(value)

    per_method = {name: text(method.defaults[spec.name]) for name, method in REGISTRY.items()
                  if spec.name in method.defaults}
    if per_method:
        if len(set(per_method.values())) == 1:
            return f"method default: {next(iter(per_method.values()))}"
        return "method default: " + ", ".join(f"{name} {value}" for name, value in per_method.items())
    return f"default: {text(spec.default)}"


from subjectgen_training.methods.cd import CustomDiffusion  # noqa: E402
from subjectgen_training.methods.cd_cr import CustomDiffusionCrossInit  # noqa: E402
from subjectgen_training.methods.cr import CrossInitialization  # noqa: E402

register(CustomDiffusion)
register(CrossInitialization)
register(CustomDiffusionCrossInit)
