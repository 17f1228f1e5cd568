"""One definition of each training field: a :class:`TrainConfig` field with its help text is the ``subjectgen train``
flag, the web UI's form field and the value read back into the config, with no copy in ``training/commands``."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

import subjectgen_training.trainer.config as train_config
from subjectgen_training.commands import train as train_command
from subjectgen_training.config_flags import ConfigFlagError, add_config_arguments, config_values, flag_specs, option
from subjectgen_training.ui import forms

TRAIN = ["--base", "toy-base", "--photos", "in", "--method", "cd", "--out", "out"]


def train_args(*argv: str) -> argparse.Namespace:
    return forms.train_parser().parse_args([*TRAIN, *argv])


def test_a_field_added_to_trainconfig_is_a_flag_a_form_field_and_flows_back_into_the_config(monkeypatch, capsys):
    from subjectgen_training.cli import main

    @dataclasses.dataclass
    class WithEma(train_config.TrainConfig):
        ema_decay: float | None = option(None, help="decay of an exponential moving average of the weights")

    monkeypatch.setattr(train_config, "TrainConfig", WithEma)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--ema-decay EMA_DECAY decay of an exponential moving average of the weights (default: none)" in help_text

    config = train_command.config_from_args(train_args("--ema-decay", "0.999"))
    assert isinstance(config, WithEma) and config.ema_decay == 0.999
    assert config.resolved().ema_decay == 0.999  # the method's recipe fills the other fields and keeps this one

    field = next(f for f in forms.train_form_fields() if f.name == "ema_decay")
    assert (field.flag, field.kind) == ("--ema-decay", "float") and "exponential moving average" in field.help
    flags = forms.read_form([field], ["0.5"])
    assert WithEma.from_dict({"base": "b", "photos": "p", "method": "cd", "out": "o", **flags}).ema_decay == 0.5


def test_flags_keep_their_spelling_kinds_and_a_given_flag_overrides_the_config_file(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("steps: 5\nmask_loss: true\nscale_lr: true\nrandom_rescale: true\nlr: 0.002\n")
    args = train_args("--config", str(file), "--steps", "7", "--no-scale-lr", "--random-rescale", "no",
                      "--cd-scope", "kv+q+out", "--use-8bit-adam")
    config = train_command.config_from_args(args)
    assert (config.steps, config.scale_lr, config.random_rescale, config.cd_scope) == (7, False, False, "kv+q+out")
    assert (config.mask_loss, config.lr, config.use_8bit_adam) == (True, 0.002, True)  # from the file / a switch
    assert train_command.config_from_args(train_args("--scale-lr")).scale_lr is True
    with pytest.raises(SystemExit):
        train_args("--cd-scope", "everything")
    with pytest.raises(SystemExit):
        train_args("--random-rescale", "maybe")


def test_config_only_fields_are_file_keys_with_help_but_no_flag(tmp_path):
    specs = {s.name: s for s in flag_specs(train_config.TrainConfig, cli_only=False)}  # every field has help
    flags = {s.name for s in flag_specs(train_config.TrainConfig)}
    config_only = set(specs) - flags
    assert config_only == {"caption_templates", "rescale_variants", "mask_background_weight", "adam_weight_decay",
                           "save_dtype", "subjects", "options"}  # subjects: a file's list, or made by repeated
    # --photos/--token; options: the method's own fields, which a file and the flags give as top-level keys
    help_text = forms.train_parser().format_help()
    for name in config_only:
        assert f"--{name.replace('_', '-')}" not in help_text and specs[name].help
    file = tmp_path / "run.toml"
    file.write_text('base = "b"\nphotos = "p"\nmethod = "cd"\nout = "o"\nadam_weight_decay = 0.0\n')
    assert train_command.config_from_args(train_args("--config", str(file))).adam_weight_decay == 0.0


def test_a_repeatable_field_is_one_metadata_line_and_a_field_without_help_is_refused():
    @dataclasses.dataclass
    class Joint:
        photos: list | None = option(None, kind="value", repeatable=True, help="a folder per subject")
        seed: int = option(0, help="seed")

    with pytest.raises(ConfigFlagError, match="needs an int, float or str"):
        flag_specs(Joint)

    @dataclasses.dataclass
    class Joint2:
        token: str | list[str] | None = option(None, repeatable=True, help="a token per subject")
        seed: int = option(0, help="seed")

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Joint2)
    args = parser.parse_args(["--token", "<a>", "--token", "<b>"])
    assert config_values(args, Joint2) == {"token": ["<a>", "<b>"]}
    assert parser.parse_args([]).token is None  # not given: the config file's value stays
    token = next(f for f in forms.train_form_fields(Joint2) if f.name == "token")
    assert token.read("<a>, <b>") == ["<a>", "<b>"]  # the page's box takes them separated by commas

    @dataclasses.dataclass
    class NoHelp:
        steps: int = 1

    with pytest.raises(ConfigFlagError, match="NoHelp.steps has no help text"):
        add_config_arguments(argparse.ArgumentParser(), NoHelp)
