"""The seed's recipe to the letter (issue 23): gradient accumulation (two GPUs' global batch and rate on one), the
five-setup config's Custom Diffusion rows, class images under the class prompt, fp16 with a float32 text encoder, an
unknown prediction type refused, and Custom Diffusion with a frozen output bias.

References: diffusers ``examples/custom_diffusion/train_custom_diffusion.py`` and lyuPang/CrossInitialization
``train_cross_init.py``.
"""

from __future__ import annotations

import json

import pytest
import torch

from subjectgen_diffusers.errors import SubjectgenError
from subjectgen_training.experiment.config import load_experiment_config
from subjectgen_training.trainer.config import TrainConfig

REQUIRED = dict(base="model", photos="photos", out="out")
CD_ROWS = ("cd-noreg", "cd-reg-base", "cd-reg-alt", "cd+cr-reg")


@pytest.mark.parametrize("method, extra, expected", [
    # Custom Diffusion: lr x accumulation x batch x processes, x2 with prior preservation
    ("cd", dict(batch_size=2, reg_dir="R", lr=5e-6, gradient_accumulation_steps=2), (4e-5, 4e-5)),
    ("cd", dict(batch_size=2, lr=5e-6, gradient_accumulation_steps=2), (2e-5, 2e-5)),
    # Cross Initialization: token lr x accumulation x batch x processes
    ("cr", dict(batch_size=2, gradient_accumulation_steps=3), (None, 0.000625 * 6)),
    ("cd+cr", dict(reg_dir="R", gradient_accumulation_steps=2), (4e-5, 0.0025)),
    ("cd", dict(batch_size=2, reg_dir="R", lr=5e-6, gradient_accumulation_steps=2, scale_lr=False), (5e-6, 5e-6)),
])
def test_gradient_accumulation_enters_each_reference_rule(method, extra, expected):
    rates = TrainConfig.from_dict({**REQUIRED, "method": method, **extra}).resolved().effective_rates(1)
    assert (rates.lr is None) == (expected[0] is None)
    if expected[0] is not None:
        assert rates.lr == pytest.approx(expected[0])
    assert rates.token_lr == pytest.approx(expected[1])


def test_five_setups_trains_the_cd_rows_at_two_gpus_global_batch_for_1500_steps():
    config = load_experiment_config("five_setups")
    for setup in config.setups:
        values = {**config.train, **setup.train, "base": config.base, "photos": "p", "method": setup.method, "out": "o",
                  "reg_dir": "R" if setup.regularization else None}
        one_gpu = TrainConfig.from_dict(values).resolved()
        if setup.name not in CD_ROWS:
            assert (one_gpu.steps, one_gpu.gradient_accumulation_steps) == (320, 1), setup.name  # CR's own recipe
            continue
        assert (one_gpu.steps, one_gpu.batch_size, one_gpu.gradient_accumulation_steps) == (1500, 2, 2), setup.name
        two_gpus = TrainConfig.from_dict({**values, "gradient_accumulation_steps": 1}).resolved()
        assert one_gpu.effective_rates(1) == two_gpus.effective_rates(2), setup.name  # the same global batch and rate
        if setup.regularization:
            assert one_gpu.effective_rates(1).lr == pytest.approx(4e-5)  # 5e-6 x 2 x 2 x 2 (prior preservation)
    # class images are drawn under the prompt they are trained under (the class prompt), for both sets
    assert {spec.prompt for spec in config.regularizations.values()} == {config.train["class_prompt"]} == {"person"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, astronaut_image, grace_hopper_image):
    photos, reg = tmp_path_factory.mktemp("photos"), tmp_path_factory.mktemp("reg")
    for i, box in enumerate([(0, 0, 400, 400), (60, 0, 460, 400), (0, 40, 420, 460), (40, 40, 440, 440)]):
        astronaut_image.crop(box).save(photos / f"photo{i}.png")
    for i, box in enumerate([(0, 0, 300, 300), (100, 100, 400, 400)]):
        grace_hopper_image.crop(box).save(reg / f"person{i}.png")
    # as `subjectgen regularize` leaves them: each image with the prompt that drew it
    (reg / "manifest.jsonl").write_text("".join(json.dumps({"file": f"person{i}.png", "prompt": "a photo of a person"})
                                                + "\n" for i in range(2)))
    return photos, reg


def _trainer(tiny_sd_dir, folders, tmp_path, **extra):
    from subjectgen_training.trainer.loop import Trainer

    photos, reg = folders
    values = dict(base=str(tiny_sd_dir), photos=str(photos), out=str(tmp_path / "out"), resolution=64, batch_size=1,
                  steps=2, method="cd+cr")
    return Trainer(TrainConfig.from_dict({**values, **extra}))


def test_class_images_train_under_the_class_prompt(tiny_sd_dir, folders, tmp_path, caplog):
    trainer = _trainer(tiny_sd_dir, folders, tmp_path, reg_dir=str(folders[1]), class_prompt="person")
    assert trainer.reg_captions == ["person"] * len(trainer.reg)  # not the manifest's "a photo of a person"
    assert set(trainer.class_states) == {"person"}
    assert "train under the class prompt 'person'" in caplog.text


def test_accumulated_batches_make_one_optimizer_step(tiny_sd_dir, folders, tmp_path):
    """accelerate's accumulate: 2 batches (distinct draws) per optimizer step; `steps` counts optimizer steps."""
    trainer = _trainer(tiny_sd_dir, folders, tmp_path, gradient_accumulation_steps=2, method="cr", steps=3)
    batches, done = [], []
    step_loss = trainer.step_loss
    trainer.step_loss = lambda batch: (batches.append(batch), step_loss(batch))[1]
    trainer.on_step = lambda step, logs: done.append((step, int(trainer.optimizer.state_dict()["state"][0]["step"])))
    trainer.run()
    assert batches == [0, 1, 2, 3, 4, 5]
    assert done == [(1, 1), (2, 2), (3, 3)]  # AdamW stepped once per 2 batches
    saved = json.loads((tmp_path / "out" / "train_config.json").read_text())
    assert saved["gradient_accumulation_steps"] == 2 and saved["effective_token_lr"] == pytest.approx(0.000625 * 2)


def test_fp16_keeps_the_frozen_text_encoder_in_float32(tiny_sd_dir, folders, tmp_path):
    trainer = _trainer(tiny_sd_dir, folders, tmp_path, mixed_precision="fp16")
    assert {p.dtype for p in trainer.parts.text_encoder.parameters()} == {torch.float32}  # as both references
    assert {p.dtype for p in trainer.parts.unet.parameters() if not p.requires_grad} == {torch.float16}


def test_an_unknown_prediction_type_is_refused(tiny_sd_dir, folders, tmp_path):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_sd_dir, base)
    path = base / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "prediction_type": "sample"}))
    with pytest.raises(SubjectgenError, match="prediction_type 'sample'"):
        _trainer(base, folders, tmp_path, base=str(base))


def test_a_frozen_output_bias_leaves_no_bias_delta(tiny_sd_dir, folders, tmp_path):
    from subjectgen_diffusers.subject_format import Subject

    trainer = _trainer(tiny_sd_dir, folders, tmp_path, cd_train_bias=False, lr=1e-3, scale_lr=False)
    assert not any(name.endswith("bias") for name in trainer.method.weight_parameters())
    subject = Subject.load(trainer.run())
    assert subject.config.cd_scope == "kv+q+out" and not subject.bias_deltas
    assert all(d.abs().max() > 0 for layer in subject.deltas.values() for d in layer.values())  # the weights trained
