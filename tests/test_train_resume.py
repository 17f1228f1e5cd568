"""Checkpoints: a run killed mid-way and resumed with --resume ends with the same subject as an uninterrupted run."""

from __future__ import annotations

import pytest
import torch

from subjectgen_diffusers.subject_format import Subject
from training.checkpoints import list_checkpoints
from training.train_config import TrainConfig
from training.trainer import train


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory, astronaut_image):
    folder = tmp_path_factory.mktemp("photos")
    for i, box in enumerate([(0, 0, 400, 400), (60, 0, 460, 400), (0, 40, 420, 460)]):
        astronaut_image.crop(box).save(folder / f"photo{i}.jpg")
    return folder


@pytest.fixture(scope="module")
def reg_dir(tmp_path_factory, grace_hopper_image):
    folder = tmp_path_factory.mktemp("reg")
    for i in range(2):
        grace_hopper_image.rotate(5 * i).save(folder / f"reg{i}.png")
    return folder


def test_killed_and_resumed_equals_uninterrupted(tiny_sd_dir, photo_dir, reg_dir, tmp_path):
    common = dict(base=str(tiny_sd_dir), photos=str(photo_dir), reg_dir=str(reg_dir), method="cd+cr", resolution=64,
                  batch_size=2, steps=6, lr=1e-3, token_lr=1e-2, checkpoint_every=2, checkpoints_total_limit=2)
    straight = train(TrainConfig.from_dict({**common, "out": str(tmp_path / "straight")}))

    out = tmp_path / "killed"

    def kill_after_five(step, logs):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        train(TrainConfig.from_dict({**common, "out": str(out)}), on_step=kill_after_five)
    assert [p.name for p in list_checkpoints(out)] == ["step-0000002", "step-0000004"]  # last K=2 kept
    assert not (out / "subject.safetensors").exists()

    resumed_steps = []
    train(TrainConfig.from_dict({**common, "out": str(out), "resume": True}), on_step=lambda s, _: resumed_steps.append(s))
    assert resumed_steps == [5, 6]

    a, b = Subject.load(straight), Subject.load(out)
    torch.testing.assert_close(b.token_embeddings, a.token_embeddings, atol=1e-6, rtol=1e-5)
    assert set(a.deltas) == set(b.deltas)
    for layer in a.deltas:
        for proj in a.deltas[layer]:
            torch.testing.assert_close(b.deltas[layer][proj], a.deltas[layer][proj], atol=1e-6, rtol=1e-5)
    assert a.deltas[next(iter(a.deltas))]["to_k"].abs().max() > 0


def test_resume_without_checkpoints_starts_from_zero(tiny_sd_dir, photo_dir, tmp_path):
    steps = []
    config = TrainConfig.from_dict(dict(base=str(tiny_sd_dir), photos=str(photo_dir), method="cr", out=str(tmp_path / "o"),
                                        resolution=64, batch_size=1, steps=2, resume=True))
    train(config, on_step=lambda s, _: steps.append(s))
    assert steps == [1, 2] and (tmp_path / "o" / "subject.safetensors").is_file()
