"""The ``subjectgen`` commands: one table (name, help, the extra it needs, its module) and one module per command.

A command module holds argument parsing only -- ``add_arguments(parser)``, generated from the command's typed config
(:func:`subjectgen_training.config_flags.add_config_arguments`), and ``run(args) -> int`` -- the work happens in typed
functions one layer down; nothing below this package imports it. Only the chosen command's module is imported, so
``subjectgen --help`` is instant.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OptionExtra:
    """An option that needs more than its command: ``dest`` given (or equal to ``value``) needs ``extra``'s
    ``modules``."""

    dest: str
    extra: str
    modules: tuple[str, ...]
    value: str | None = None  # None: any value given


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    extra: str | None  # the extra (setup.cfg extras_require) every run needs; None: the plug-in's own dependencies
    entry: str  # the module with add_arguments(parser) and run(args)
    option_extras: tuple[OptionExtra, ...] = ()


_PACKAGE = __name__
_RAY = OptionExtra("executor", "ray", ("ray",), value="ray")  # --executor ray (experiment, batch)

COMMANDS: dict[str, Command] = {command.name: command for command in (
    Command("demo", "the whole path offline: the shipped toy model learns a toy subject (--real-photos: sample photos "
            "of a person on a tiny random-weight model)", "demo", f"{_PACKAGE}.demo"),
    Command("prepare", "face-aware square crops and masks from a folder of photos", "face", f"{_PACKAGE}.prepare"),
    Command("regularize", "generate regularisation images with any text-to-image model", "train",
            f"{_PACKAGE}.regularize"),
    Command("train", "train a subject: Custom Diffusion, Cross Initialization or both", "train", f"{_PACKAGE}.train"),
    # diffusers' load_lora_weights needs peft, which only the 'train' extra installs
    Command("generate", "sample images of a trained subject from prompt files", None, f"{_PACKAGE}.generate",
            (OptionExtra("lora", "train", ("peft",)),)),
    # --face-model dlib (the default) needs 'face': subjectgen_training.data.faces names it
    Command("evaluate", "identity, prompt fidelity and face-detection rate of images", None, f"{_PACKAGE}.evaluate"),
    Command("experiment", "run subjects x setups end to end and write the report", "train", f"{_PACKAGE}.experiment",
            (_RAY,)),
    Command("batch", "many people: prepare, train, preview and score each person of a PEOPLE.yaml (resumable; "
            "--executor ray spreads them over a cluster)", "train", f"{_PACKAGE}.batch", (_RAY,)),
    Command("export", "export a subject as a LoRA + embedding, diffusers textual-inversion/Custom Diffusion or A1111 "
            "files", None, f"{_PACKAGE}.export"),
    Command("compress", "store a subject's weight deltas as low-rank factors (--rank R or --energy E)", None,
            f"{_PACKAGE}.compress"),
    Command("merge", "merge several subjects into one (Custom Diffusion's constrained merge): one folder, every "
            "token", None, f"{_PACKAGE}.merge"),
    Command("push", "upload a subject folder to the Hugging Face Hub with a model card", None, f"{_PACKAGE}.push"),
    Command("ui", "a web page (Gradio): photos -> subject -> pictures, on the toy model by default", "ui",
            f"{_PACKAGE}.ui"),
    Command("models", "list the built-in models (builtin:<name>), usable wherever a command takes a model", None,
            f"{_PACKAGE}.models"),
)}
