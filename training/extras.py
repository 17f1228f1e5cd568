"""Which optional dependency group ("extra") each ``subjectgen`` command needs, checked before the command runs.

``pip install subjectgen-diffusers`` alone installs the plug-in: what loading a subject into a diffusers pipeline
needs. The commands that train, detect faces or serve a web page need an extra (setup.cfg ``extras_require``);
when one is missing the CLI says which to install instead of failing later with an ``ImportError``.
"""

from __future__ import annotations

import importlib.util

from subjectgen_diffusers.errors import SubjectgenError

PACKAGE = "subjectgen-diffusers"

# The modules every run of a command of that extra imports (import names; setup.cfg lists the distributions).
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "train": ("accelerate", "peft", "yaml"),
    "face": (),  # subjectgen_training.faces.import_dlib names this extra (and its two packages) when dlib is missing
    "demo": ("accelerate", "peft", "yaml"),  # --real-photos also needs dlib and scikit-image: named when used
    "ui": ("accelerate", "peft", "yaml", "gradio"),
    "ray": ("ray",),  # --executor ray (experiment, batch)
}

# None: the plug-in's own dependencies suffice. A command missing here is treated as needing ``train``.
COMMAND_EXTRAS: dict[str, str | None] = {
    "demo": "demo",
    "prepare": "face",
    "regularize": "train",
    "train": "train",
    "generate": None,
    "evaluate": None,  # --face-model dlib (the default) needs 'face': subjectgen_training.faces names it
    "experiment": "train",
    "batch": "train",
    "export": None,
    "compress": None,
    "push": None,
    "merge": None,  # the plug-in's merge_subjects: loading needs nothing more
    "ui": "ui",
    "models": None,
}


# An option that needs more than its command: (command, option's argparse dest) -> (extra, modules it needs).
# diffusers' load_lora_weights needs peft, which only the 'train' extra installs.
OPTION_EXTRAS: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {
    ("generate", "lora"): ("train", ("peft",)),
}

# An option value that needs an extra: (command, dest, value) -> (extra, modules it needs).
OPTION_VALUE_EXTRAS: dict[tuple[str, str, str], tuple[str, tuple[str, ...]]] = {
    ("experiment", "executor", "ray"): ("ray", ("ray",)),
    ("batch", "executor", "ray"): ("ray", ("ray",)),
}


def install_hint(extra: str) -> str:
    return f'pip install "{PACKAGE}[{extra}]"'


def missing_modules(modules: tuple[str, ...]) -> list[str]:
    """The modules that are not installed (looked up, not imported: no side effects, no torch load)."""
    return [module for module in modules if importlib.util.find_spec(module) is None]


def require_extra(extra: str | None, *, command: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise :class:`SubjectgenError` naming the extra to install when a module ``command`` needs is missing."""
    if extra is None:
        return
    missing = missing_modules(EXTRA_MODULES[extra] if modules is None else modules)
    if missing:
        raise SubjectgenError(f"`subjectgen {command}` needs the '{extra}' extra ({', '.join(missing)} not installed): "
                              f"{install_hint(extra)}")


def require_command_extra(command: str, args: object = None) -> None:
    """Check the extra of ``command`` and of the options given in ``args`` (an argparse namespace)."""
    require_extra(COMMAND_EXTRAS.get(command, "train"), command=command)
    for (name, dest), (extra, modules) in OPTION_EXTRAS.items():
        if name == command and getattr(args, dest, None):
            require_extra(extra, command=f"{command} --{dest.replace('_', '-')}", modules=modules)
    for (name, dest, value), (extra, modules) in OPTION_VALUE_EXTRAS.items():
        if name == command and getattr(args, dest, None) == value:
            require_extra(extra, command=f"{command} --{dest.replace('_', '-')} {value}", modules=modules)
