"""Joint training (Custom Diffusion, Kumari et al. 2023, Sec. 3.2): several people in one run, one set of deltas and
one token each, every photo captioned with its own person's token; ``--photos A/ --photos B/ --token <a> --token <b>``
or a config listing ``subjects``."""

from __future__ import annotations

import pytest
import torch

from subjectgen_diffusers.subject_format import Subject
from subjectgen_training.commands.train import people_from_flags
from subjectgen_training.trainer.config import TrainConfig, TrainConfigError
from subjectgen_training.trainer.loop import Trainer


@pytest.fixture(scope="module")
def two_people(tmp_path_factory, astronaut_image, grace_hopper_image):
    folders = []
    for name, image in (("ada", astronaut_image), ("grace", grace_hopper_image)):
        folder = tmp_path_factory.mktemp(name)
        for i, box in enumerate([(0, 0, 400, 400), (40, 0, 440, 400), (0, 40, 400, 440), (40, 40, 440, 440)]):
            image.crop(box).save(folder / f"photo{i}.png")
        folders.append(folder)
    return folders


def test_repeated_photos_and_token_flags_become_the_subjects_of_a_joint_run():
    assert people_from_flags(["a/"], ["<a>"]) == {"photos": "a/", "token": "<a>"}
    assert people_from_flags(["a/", "b/"], ["<a>", "<b>"]) == {
        "subjects": [{"photos": "a/", "token": "<a>"}, {"photos": "b/", "token": "<b>"}]}
    with pytest.raises(TrainConfigError, match="pairs each --photos with its own --token"):
        people_from_flags(["a/", "b/"], ["<a>"])


@pytest.mark.parametrize("subjects, message", [
    ([{"photos": "a", "token": "<a>"}, {"photos": "b", "token": "<a>"}], "its own token"),
    ([{"photos": "a", "token": "<a>"}], "two or more"),
    ([{"photos": "a", "token": "<a>"}, {"photos": "b", "token": "<b>", "colour": "red"}], "colour"),
])
def test_a_wrong_subjects_list_is_refused(subjects, message):
    with pytest.raises(TrainConfigError, match=message):
        TrainConfig.from_dict({"base": "m", "method": "cd", "out": "o", "subjects": subjects})
    with pytest.raises(TrainConfigError, match="not both"):
        TrainConfig.from_dict({"base": "m", "method": "cd", "out": "o", "photos": "p",
                               "subjects": [{"photos": "a", "token": "<a>"}, {"photos": "b", "token": "<b>"}]})


@pytest.mark.slow
def test_joint_run_trains_one_token_per_person_and_both_load(tiny_sd_dir, two_people, tmp_path):
    from diffusers import StableDiffusionPipeline

    from subjectgen_diffusers import load_subject, loaded_subjects

    config = TrainConfig.from_dict({
        "base": str(tiny_sd_dir), "method": "cd+cr", "out": str(tmp_path / "joint"), "resolution": 64,
        "batch_size": 2, "steps": 3, "seed": 0, "scale_lr": False, "class_prompt": "a person",
        "subjects": [{"photos": str(two_people[0]), "token": "<ada>"},
                     {"photos": str(two_people[1]), "token": "<grace>", "class_prompt": "a woman"}]})
    trainer = Trainer(config)
    # every cached view's caption carries the token of the person in that photo, and both people are drawn
    people = {0: "<ada>", 1: "<grace>"}
    for view in range(len(trainer.instance)):
        person = trainer.data.photo_subject[trainer.instance.source[view]]
        assert people[person] in trainer._captions_of(view).plain()
        assert people[1 - person] not in trainer._captions_of(view).plain()
    import random

    drawn = {trainer.data.photo_subject[trainer._draw_photo(random.Random(seed))] for seed in range(20)}
    assert drawn == {0, 1}
    # the Cross Initialization pull holds one start per token row: each person's rows start at the celebrity-name
    # start (the same for both), the pull is zero there and grows with the distance of any one row from its start
    start = trainer.rows.rows.detach().clone()
    tokens = trainer.method.tokens
    # one start per person, keyed by the encoder and the person's first token id
    assert sorted(tokens.starts) == [("text_encoder", group[0]) for group in trainer.token_groups]
    assert tokens.target.shape == start.shape == (4, start.shape[1])
    torch.testing.assert_close(tokens.target, start, rtol=0, atol=0)
    torch.testing.assert_close(start[:2], start[2:], rtol=0, atol=0)
    assert float(trainer.method.extra_loss(start)) == 0.0
    for row in range(4):
        moved = start.clone()
        moved[row] += 3.0 / moved.shape[1] ** 0.5  # a step of length 3 on one row
        expected = tokens.reg_weight * 3.0 / 4  # the mean over the 4 rows of each row's distance from its start
        assert float(trainer.method.extra_loss(moved)) == pytest.approx(expected, rel=1e-4)
    trainer.run()

    subject = Subject.load(tmp_path / "joint")
    assert subject.config.tokens == [("<ada>", 2), ("<grace>", 2)]
    assert subject.token_embeddings.shape == (4, start.shape[1])
    rows = subject.config.token_rows()
    for token in ("<ada>", "<grace>"):  # each person's rows trained
        assert not torch.allclose(subject.token_embeddings[rows[token]], start[rows[token]])
    assert subject.deltas and subject.config.training["subjects"][1] == {
        "token": "<grace>", "photos": two_people[1].name, "class_prompt": "a woman"}

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    token = load_subject(pipe, tmp_path / "joint")
    assert loaded_subjects(pipe)[token].tokens == ["<ada>", "<grace>"]
    assert pipe.maybe_convert_prompt("<ada> and <grace>", pipe.tokenizer) == "<ada> <ada>_1 and <grace> <grace>_1"
    ids = pipe.tokenizer("<grace>_1", add_special_tokens=False).input_ids
    embedding = pipe.text_encoder.get_input_embeddings().weight
    assert torch.equal(embedding[ids[0]], subject.token_embeddings[3])


@pytest.mark.slow
def test_cli_joint_run_with_repeated_photos_and_token(tiny_sd_dir, two_people, tmp_path):
    from _cli import run_cli

    out = tmp_path / "joint"
    result = run_cli("train", "--base", str(tiny_sd_dir), "--photos", str(two_people[0]), "--photos",
                     str(two_people[1]), "--token", "<ada>", "--token", "<grace>", "--method", "cd", "--out", str(out),
                     "--steps", "2", "--resolution", "64", "--batch-size", "1", env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert Subject.load(out).config.tokens == [("<ada>", 1), ("<grace>", 1)]
    refused = run_cli("train", "--base", str(tiny_sd_dir), "--photos", str(two_people[0]), "--photos",
                      str(two_people[1]), "--token", "<ada>", "--method", "cd", "--out", str(tmp_path / "x"))
    assert refused.returncode != 0 and "error:" in refused.stderr and "its own --token" in refused.stderr
