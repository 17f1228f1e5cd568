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
    "export": None,
    "compress": None,
    "push": None,
    "ui": "ui",
}


def install_hint(extra: str) -> str:
    return f'pip install "{PACKAGE}[{extra}]"'


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that are not installed (looked up, not imported: no side effects, no torch load)."""
    return [module for module in EXTRA_MODULES[extra] if importlib.util.find_spec(module) is None]


def require_extra(extra: str | None, *, command: str) -> None:
    """Raise :class:`SubjectgenError` naming the extra to install when a module ``command`` needs is missing."""
    if extra is None:
        return
    missing = missing_modules(extra)
    if missing:
        raise SubjectgenError(f"`subjectgen {command}` needs the '{extra}' extra ({', '.join(missing)} not installed): "
                              f"{install_hint(extra)}")


def require_command_extra(command: str) -> None:
    require_extra(COMMAND_EXTRAS.get(command, "train"), command=command)
