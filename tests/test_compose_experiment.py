"""The compose experiment's pieces (``subjectgen experiment compose_toy``): its config, generation with several
subjects loaded and a chosen token, and the composition table of the report. The full toy run takes CPU-minutes and
is measured in training/toy/README.md instead of here."""

from __future__ import annotations

import pytest
import torch
import yaml
from _cli import REPO_ROOT
from _plugin_fixtures import make_subject

from subjectgen_training.experiment.config import ExperimentConfigError, load_experiment_config
from subjectgen_training.sampling.generate import GenerateConfig, GenerateError, generate_images, read_manifest
from subjectgen_training.experiment.report import compose_markdown


def test_compose_toy_ships_three_faces_with_their_own_tokens_in_groups_of_two_and_three():
    config = load_experiment_config("compose_toy")
    assert [s.token for s in config.subjects] == ["<face-a>", "<face-b>", "<face-c>"]
    assert [len(group) for group in config.compose.groups] == [2, 3]
    setup = next(s for s in config.setups if s.name == config.compose.setup)
    five = load_experiment_config("five_setups_toy")
    same = next(s for s in five.setups if s.name == "cd+cr-reg")
    assert (setup.method, setup.train, config.train) == (same.method, same.train, five.train)
    assert not {s.photos for s in config.subjects} & {s.photos for s in five.subjects}


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["compose"].update(setup="nope"), "compose.setup 'nope' is not one of the setups"),
    (lambda d: d["compose"].update(groups=[["face-a", "face-x"]]), "two or more different subjects"),
    (lambda d: d["compose"].update(groups=[["face-a"]]), "two or more different subjects"),
    (lambda d: d["subjects"][1].update(token="<face-a>"), "each needs its own `token`"),
    (lambda d: d["compose"].update(group=[]), "unknown keys ['group']"),
])
def test_compose_config_errors(tmp_path, edit, message):
    data = yaml.safe_load(open(REPO_ROOT / "training" / "configs" / "compose_toy.yaml"))
    edit(data)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ExperimentConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_experiment_config(path)


def test_generation_loads_subjects_side_by_side_and_fills_the_chosen_token(tiny_sd_dir, tiny_pipe, tmp_path):
    a = make_subject(tiny_pipe, "<s1>", seed=1, vectors=torch.randn(1, 32) * 0.5)
    b = make_subject(tiny_pipe, "<s2>", seed=2, vectors=torch.randn(1, 32) * 0.5)
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    common = dict(base=str(tiny_sd_dir), prompts="a photo of {}", num_per_prompt=1, steps=2, seed=3)
    both = GenerateConfig(**common, subject=str(tmp_path / "a"), also_load=[str(tmp_path / "b")], token="<s2>",
                          out=str(tmp_path / "both"))
    generate_images(both)
    entry = read_manifest(tmp_path / "both")[0]
    assert entry["prompt"] == "a photo of <s2> person" and entry["settings"]["also_load"] == [str(tmp_path / "b")]
    # the same prompt with only b loaded differs: a's deltas were there too
    alone = GenerateConfig(**common, subject=str(tmp_path / "b"), out=str(tmp_path / "alone"))
    generate_images(alone)
    import numpy as np
    from PIL import Image

    pixels = [np.asarray(Image.open(tmp_path / name / read_manifest(tmp_path / name)[0]["file"]), dtype=int)
              for name in ("both", "alone")]
    assert read_manifest(tmp_path / "alone")[0]["prompt"] == "a photo of <s2> person"
    assert np.abs(pixels[0] - pixels[1]).max() > 0
    with pytest.raises(GenerateError, match="not a loaded subject's token"):
        generate_images(GenerateConfig(**common, subject=str(tmp_path / "a"), token="<s9>", out=str(tmp_path / "x")))


def test_composition_table_shows_every_condition_and_its_difference_from_alone():
    row = {"alone": {"likeness": 0.5, "prompt_following": 0.8}, "added": {"likeness": 0.3, "prompt_following": 0.7},
           "merged": {"likeness": 0.45, "prompt_following": 0.8}, "joint": {"likeness": 0.52, "prompt_following": None}}
    summary = {"compose": {"setup": "cd+cr-reg", "conditions": ["alone", "added", "merged", "joint"],
                           "groups": [{"subjects": ["a", "b"], "rows": {"a": row},
                                       "merge": {"regularization_captions": 30,
                                                 "max_relative_constraint_error": 1e-7}}]}}
    text = "\n".join(compose_markdown(summary))
    assert "| a | 0.500 / 0.800 | 0.300 / 0.700 | 0.450 / 0.800 | 0.520 / – | -0.200 / -0.100 | -0.050 / +0.000 " \
           "| +0.020 / – |" in text
    assert "### a + b" in text and "30 regularisation captions" in text
