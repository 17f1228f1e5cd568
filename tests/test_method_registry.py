"""Each method is one registered module: the trainer never names a method, the shared tables (scopes, Custom
Diffusion weight names, multi-vector token spelling) exist once, and a new method registered from one module is
trained, saved, validated and carded without touching anything else."""

from __future__ import annotations

import dataclasses
import json

import pytest

from subjectgen_diffusers import methods as format_table
from _cli import REPO_ROOT
from _source import string_literals
from subjectgen_training import methods as registry
from subjectgen_training.config_flags import option


def test_the_trainer_contains_no_method_name():
    source = (REPO_ROOT / "training" / "trainer" / "loop.py").read_text(encoding="utf-8")
    literals = string_literals(REPO_ROOT / "training" / "trainer" / "loop.py")
    assert not set(registry.method_names()) & literals
    for word in ("cross_init", "custom_diffusion", "CrossInit", "CustomDiffusion", "cross_initialised", "method.deltas", "method.tokens"):
        assert word not in source, word


def test_the_shared_tables_are_written_once():
    """Outside subjectgen_diffusers/methods.py no module spells the CD weight names or the multi-vector token."""
    offenders = []
    for folder in ("subjectgen_diffusers", "training"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            if path.name == "methods.py" and path.parent.name == "subjectgen_diffusers":
                continue
            literals = string_literals(path)
            if any("_custom_diffusion" in text and "pytorch_custom_diffusion_weights" not in text for text in literals):
                offenders.append(f"{path}: a Custom Diffusion weight name")
            if any(text.startswith("_") and text != "_" and "{i}" in text for text in literals) or \
                    "{token}_{i}" in path.read_text(encoding="utf-8"):
                offenders.append(f"{path}: the token spelling")
    assert not offenders, offenders


def test_cli_choices_config_and_format_read_the_registry():
    import argparse

    from subjectgen_training.commands import train as command
    from subjectgen_training.trainer.config import METHODS

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    choices = next(a.choices for a in parser._actions if a.dest == "method")
    assert list(choices) == list(registry.method_names()) == list(METHODS)
    assert set(registry.method_names()) <= set(format_table.METHODS)


@dataclasses.dataclass
class _WordOptions:
    init_word: str = option("person", help="the start word")


class _WordTokenOnly(registry.Method):
    """A textual-inversion-like method: one token from a vocabulary entry, no weights (the test's new module)."""

    info = format_table.MethodInfo(name="ti-test", title="Test Inversion", note="A test-only method.",
                                   hub_tag="test-inversion", has_deltas=False)
    options = _WordOptions
    defaults = dict(steps=1, lr=None, token_lr=1e-3, batch_size=1, num_vectors=1, prompt="photo of a {} person",
                    class_prompt="person", flip_p=0.0, random_rescale=False, caption_templates=False, max_grad_norm=0.0)
    instance_loss_mean = "elements"

    def __init__(self, config):
        from subjectgen_training.methods.word_init import WordInitTokens

        super().__init__(config)
        self.tokens = WordInitTokens(config.options.init_word)

    @classmethod
    def rates(cls, config, num_processes):
        from subjectgen_training.methods.base import Rates

        return Rates(None, config.token_lr * (num_processes if config.scale_lr else 1))

    def initial_rows(self, tokenizer, text_encoder, token_ids):
        return self.tokens.initial_rows(tokenizer, text_encoder, token_ids)


@pytest.fixture
def new_method():
    registry.register(_WordTokenOnly)
    yield _WordTokenOnly
    registry.REGISTRY.pop("ti-test")
    format_table.METHODS.pop("ti-test")


def test_a_new_method_is_one_class_and_one_registration(new_method, tiny_sd_dir, astronaut_image, tmp_path):
    from subjectgen_diffusers.hub import render_subject_card
    from subjectgen_diffusers.subject_format import Subject
    from subjectgen_training.trainer.config import TrainConfig
    from subjectgen_training.trainer.loop import Trainer

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, box in enumerate([(0, 0, 400, 400), (60, 0, 460, 400)]):
        astronaut_image.crop(box).save(photos / f"p{i}.png")
    config = TrainConfig.from_dict(dict(base=str(tiny_sd_dir), photos=str(photos), out=str(tmp_path / "s"),
                                        method="ti-test", resolution=64))
    out = Trainer(config).run()
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["method"] == "ti-test" and saved["effective_lr"] is None and saved["effective_token_lr"] == 1e-3
    subject = Subject.load(out)
    assert subject.config.method == "ti-test" and not subject.deltas and not subject.config.has_deltas
    assert subject.config.training["token_lr"] == 1e-3
    card = render_subject_card(out)
    assert "Test Inversion" in card and "test-inversion" in card


def test_registering_a_taken_name_with_another_description_fails():
    clash = format_table.MethodInfo(name="cd", title="Other", note="", hub_tag="x", has_deltas=False)
    with pytest.raises(Exception, match="already registered"):
        format_table.register_method_info(clash)
