"""A method's own fields live in its own config dataclass: ``subjectgen train`` shows them as the method's group,
a file or flag gives them as top-level keys (every existing key and flag keeps its spelling), train_config.json
records them, and another method's field is refused. A test-only method with a field of its own is one class plus
one registration line, and trains through the CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from subjectgen_diffusers import methods as format_table
from subjectgen_training import methods as registry
from subjectgen_training.config_flags import option
from subjectgen_training.methods.base import Rates
from subjectgen_training.trainer.config import TrainConfig, TrainConfigError


# -- the test's new method module -------------------------------------------------------------------------------------
@dataclass
class ScaledWordOptions:
    init_word: str = option("person", help="word whose embedding starts the token")
    row_scale: float = option(1.0, help="a test-only field: the start row times this")


class ScaledWord(registry.Method):
    """Textual inversion from a word's row, scaled: a method with a field no other method has."""

    info = format_table.MethodInfo(name="scaled-test", title="Scaled Word", note="A test-only method.",
                                   hub_tag="scaled-word", has_deltas=False)
    options = ScaledWordOptions
    defaults = dict(steps=1, lr=None, token_lr=1e-3, batch_size=1, num_vectors=1, prompt="photo of a {} person",
                    class_prompt="person", flip_p=0.0, random_rescale=False, caption_templates=False,
                    max_grad_norm=0.0)
    instance_loss_mean = "elements"

    def __init__(self, config):
        from subjectgen_training.methods.word_init import WordInitTokens

        super().__init__(config)
        self.tokens = WordInitTokens(config.options.init_word)

    @classmethod
    def rates(cls, config, num_processes):
        return Rates(None, config.token_lr)

    def initial_rows(self, tokenizer, text_encoder, token_ids):
        return self.tokens.initial_rows(tokenizer, text_encoder, token_ids) * self.config.options.row_scale

    def describe(self):
        return {"method": self.name(), "row_scale": self.config.options.row_scale}


@pytest.fixture
def scaled_word():
    registry.register(ScaledWord)  # the one registration line
    yield ScaledWord
    registry.REGISTRY.pop("scaled-test")
    format_table.METHODS.pop("scaled-test")


def _main(*args: str) -> int:
    from subjectgen_training.cli import main

    return main(list(args))


def test_a_new_method_with_its_own_field_trains_through_the_cli(scaled_word, tiny_sd_dir, astronaut_image, tmp_path,
                                                                 capsys):
    with pytest.raises(SystemExit):
        _main("train", "--help")
    help_text = " ".join(capsys.readouterr().out.split())
    assert "method scaled-test (Scaled Word): its own fields: --init-word, --row-scale" in help_text
    assert "--row-scale ROW_SCALE a test-only field: the start row times this (default: 1.0)" in help_text

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, box in enumerate([(0, 0, 400, 400), (60, 0, 460, 400)]):
        astronaut_image.crop(box).save(photos / f"p{i}.png")
    common = ("--base", str(tiny_sd_dir), "--photos", str(photos), "--resolution", "64")
    assert _main("train", *common, "--method", "cd", "--row-scale", "0.5", "--out", str(tmp_path / "cd")) == 2
    assert "error: row_scale is a field of method scaled-test, not of cd" in capsys.readouterr().err

    assert _main("train", *common, "--method", "scaled-test", "--row-scale", "0.5", "--out", str(tmp_path / "s")) == 0
    saved = json.loads((tmp_path / "s" / "train_config.json").read_text())
    assert saved["method"] == "scaled-test" and saved["row_scale"] == 0.5 and saved["init_word"] == "person"
    assert "cd_scope" not in saved and "options" not in saved
    again = TrainConfig.from_dict(saved)  # the recorded file is a config again
    assert again.options == ScaledWordOptions("person", 0.5)

    from subjectgen_training.ui import forms

    field = next(f for f in forms.train_form_fields() if f.name == "row_scale")
    assert field.methods == ("scaled-test",) and field.applies_to("scaled-test") and not field.applies_to("cd")


def test_each_method_has_its_own_fields_and_refuses_the_others():
    common = dict(base="b", photos="p", out="o")
    cd = TrainConfig.from_dict({**common, "method": "cd", "cd_scope": "kv"})
    assert type(cd.options).__name__ == "CustomDiffusionConfig" and cd.cd_scope == "kv" and cd.init_word == "ktn"
    assert cd.to_dict()["cd_scope"] == "kv" and "reg_weight" not in cd.to_dict()
    cr = TrainConfig.from_dict({**common, "method": "cr"})
    assert cr.reg_weight == 1e-5 and cr.cd_scope is None and not hasattr(cr.options, "cd_scope")
    with pytest.raises(TrainConfigError, match="cd_scope is a field of method cd / cd\\+cr, not of cr"):
        TrainConfig.from_dict({**common, "method": "cr", "cd_scope": "kv"})
    with pytest.raises(TrainConfigError, match="init_word is a field of method cd, not of cd\\+cr"):
        TrainConfig.from_dict({**common, "method": "cd+cr", "init_word": "ktn"})
    # a train_config.json written before methods had configs of their own lists every field, unset for the others
    old_cr = {**common, "method": "cr", "cd_scope": None, "init_word": None, "cd_train_bias": True,
              "reg_weight": 1e-5, "celeb_names": None}
    assert TrainConfig.from_dict(old_cr).options == cr.options
    old_cd = {**common, "method": "cd", "reg_weight": 0.0, "celeb_names": None, "cd_scope": "kv+q+out"}
    assert TrainConfig.from_dict(old_cd).options == TrainConfig.from_dict({**common, "method": "cd"}).options
