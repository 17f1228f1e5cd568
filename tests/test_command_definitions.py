"""Every command's flags come from one typed definition: the table of commands names each command's help, extra and
module; ``generate``, ``regularize``, ``prepare``, ``evaluate``, ``experiment`` and ``train`` build their parsers
from their config dataclasses, and the experiment file's ``generate`` / ``evaluate`` / ``regularizations`` sections
are the same configs' fields. A field added to a command's config (here by a test-only subclass) is a flag in
``--help`` (a real subprocess) and a key of the experiment file at once."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import textwrap

import pytest
from _cli import REPO_ROOT, cli_env

from subjectgen_training.config_flags import flag_specs

# command -> (module holding its config, config class name)
DEFINITIONS = {
    "generate": ("subjectgen_training.sampling.generate", "GenerateConfig"),
    "regularize": ("subjectgen_training.sampling.regularize", "RegularizeConfig"),
    "prepare": ("subjectgen_training.data.prepare", "PrepareConfig"),
    "evaluate": ("subjectgen_training.evaluation.evaluate", "EvaluateConfig"),
    "experiment": ("subjectgen_training.commands.experiment", "ExperimentArgs"),
    "train": ("subjectgen_training.trainer.config", "TrainConfig"),
}
NOT_FROM_CONFIG = {"help", "threads", "config_file"}


def _sub_parser(command: str) -> argparse.ArgumentParser:
    from subjectgen_training.cli import build_parser

    parser = build_parser(command)
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]


@pytest.mark.parametrize("command", sorted(DEFINITIONS))
def test_every_argument_of_a_command_is_a_field_of_its_definition(command):
    import importlib

    module, name = DEFINITIONS[command]
    config = getattr(importlib.import_module(module), name)
    fields = {spec.name for spec in flag_specs(config)}
    dests = {action.dest for action in _sub_parser(command)._actions} - NOT_FROM_CONFIG
    if command == "train":
        from subjectgen_training.trainer.config import method_fields

        dests -= {"config"}  # --config FILE: the same fields from a file
        fields |= set(method_fields())  # each method's own config: its group of flags
    assert dests == fields


def test_the_command_table_is_the_one_list(monkeypatch):
    """cli, extras and the parser read the table; a command module holds no list or help line of its own."""
    from subjectgen_training import cli, extras
    from subjectgen_training.commands import COMMANDS

    assert cli.COMMANDS is COMMANDS
    assert extras.COMMAND_EXTRAS == {name: command.extra for name, command in COMMANDS.items()}
    assert extras.OPTION_EXTRAS[("generate", "lora")] == ("train", ("peft",))
    assert extras.OPTION_VALUE_EXTRAS[("experiment", "executor", "ray")] == ("ray", ("ray",))
    import importlib

    for command in COMMANDS.values():
        module = importlib.import_module(command.entry)
        assert not hasattr(module, "HELP"), f"{command.entry}.HELP: the table holds the help line"
        assert callable(module.add_arguments) and callable(module.run)
    assert _sub_parser("generate").description == COMMANDS["generate"].help


# A test-only subclass of each command config with one more field; what --help and the experiment file must show.
SUBCLASS = """
from dataclasses import dataclass
import {module} as target
from subjectgen_training.config_flags import option

@dataclass{kw}
class WithKnob(target.{name}):
    test_knob: int = option(3, help="a test-only knob of {command}")

target.{name} = WithKnob
"""
SECTIONS = {  # command -> (experiment_config_class keyword, YAML of the section holding the new key)
    "generate": ("generate", "setups: [{name: s, method: cd}]\ngenerate: {test_knob: 7}"),
    "evaluate": ("evaluate", "setups: [{name: s, method: cd}]\nevaluate: {test_knob: 7}"),
    "regularize": ("regularize", "setups: [{name: s, method: cd, regularization: base}]\n"
                                 "regularizations: {base: {model: builtin:tiny-sd, test_knob: 7}}"),
}


def _with_knob(command: str) -> type:
    module, name = DEFINITIONS[command]
    kw = "(kw_only=True)" if command in ("regularize", "prepare", "experiment") else ""
    space: dict = {}
    exec(textwrap.dedent(SUBCLASS.format(module=module, name=name, command=command, kw=kw)), space)
    return space["WithKnob"]


@pytest.mark.parametrize("command", sorted(SECTIONS))
def test_a_field_added_to_a_command_config_is_a_flag_and_an_experiment_key(command, tmp_path, monkeypatch):
    import importlib

    from subjectgen_training.experiment.config import (ExperimentConfigError, experiment_config_class,
                                                       load_experiment_config)

    module, name = DEFINITIONS[command]
    # --help in a real subprocess, with the subclass in place of the shipped config
    code = SUBCLASS.format(module=module, name=name, command=command,
                           kw="(kw_only=True)" if command == "regularize" else "")
    code += f"\nimport sys\nfrom subjectgen_training.cli import main\nsys.exit(main({[command, '--help']!r}))\n"
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_ROOT, env=cli_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    help_text = " ".join(result.stdout.split())
    assert f"--test-knob TEST_KNOB a test-only knob of {command} (default: 3)" in help_text

    # the parsed flag builds the subclass
    subclass = _with_knob(command)
    monkeypatch.setattr(importlib.import_module(module), name, subclass)
    parser = _sub_parser(command)
    assert "--test-knob" in parser.format_help()

    # the experiment file's section of that command takes the key
    experiment = tmp_path / "e.yaml"
    experiment.write_text(textwrap.dedent(f"""\
        name: knob
        base: builtin:tiny-sd
        subjects: [{{name: a, photos: builtin:astronaut}}]
        """) + SECTIONS[command][1] + "\n", encoding="utf-8")
    keyword, _ = SECTIONS[command]
    config = load_experiment_config(experiment, experiment_config_class(**{keyword: subclass}))
    section = config.regularizations["base"] if command == "regularize" else getattr(config, command)
    assert section.test_knob == 7
    assert dataclasses.asdict(section)["test_knob"] == 7
    with pytest.raises(ExperimentConfigError, match="test_knob"):  # the shipped config has no such field
        load_experiment_config(experiment)
