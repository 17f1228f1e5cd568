"""Which optional dependency group ("extra") each ``subjectgen`` command needs, checked before the command runs.

``pip install subjectgen-diffusers`` alone installs the plug-in: what loading a subject into a diffusers pipeline
needs. The commands that train, detect faces or serve a web page need an extra (setup.cfg ``extras_require``);
when one is missing the CLI says which to install instead of failing later with an ``ImportError``.
"""

from __future__ import annotations

import importlib.util

from subjectgen_diffusers.errors import SubjectgenError
from subjectgen_training.commands import COMMANDS

PACKAGE = "subjectgen-diffusers"

# The modules every run of a command of that extra imports (import names; setup.cfg lists the distributions).
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "train": ("accelerate", "peft", "yaml"),
    "face": (),  # subjectgen_training.data.faces.import_dlib names this extra (and its two packages) when dlib is missing
    "demo": ("accelerate", "peft", "yaml"),  # --real-photos also needs dlib and scikit-image: named when used
    "ui": ("accelerate", "peft", "yaml", "gradio"),
    "ray": ("ray",),  # --executor ray (experiment, batch)
}

# Views of the command table (subjectgen_training.commands.COMMANDS, where each command names its extra): this module
# is the command line's check, run before the chosen command's module is imported.
# None: the plug-in's own dependencies suffice. A command missing here is treated as needing ``train``.
COMMAND_EXTRAS: dict[str, str | None] = {name: command.extra for name, command in COMMANDS.items()}
# An option that needs more than its command: (command, option's argparse dest) -> (extra, modules it needs).
OPTION_EXTRAS: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {
    (name, option.dest): (option.extra, option.modules)
    for name, command in COMMANDS.items() for option in command.option_extras if option.value is None}
# An option value that needs an extra: (command, dest, value) -> (extra, modules it needs).
OPTION_VALUE_EXTRAS: dict[tuple[str, str, str], tuple[str, tuple[str, ...]]] = {
    (name, option.dest, option.value): (option.extra, option.modules)
    for name, command in COMMANDS.items() for option in command.option_extras if option.value is not None}


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
