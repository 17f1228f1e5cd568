"""TrainConfig: method defaults from the papers, unknown keys rejected, files and flag overrides."""

from __future__ import annotations

import pytest

from subjectgen_training.trainer.config import TrainConfig, TrainConfigError

REQUIRED = dict(base="model", photos="photos", out="out")


@pytest.mark.parametrize(
    "method, expected",
    [
        ("cd", dict(steps=1000, lr=5e-6, token_lr=5e-6, cd_scope="kv+q+out", num_vectors=1, init_word="ktn",
                    prompt="photo of a {} person", class_prompt="person", random_rescale=False, scale_lr=True,
                    max_grad_norm=1.0, use_8bit_adam=False)),
        ("cr", dict(steps=320, lr=None, token_lr=0.000625, batch_size=8, num_vectors=2, reg_weight=1e-5,
                    flip_p=0.5, caption_templates=True, cd_scope=None, scale_lr=True, max_grad_norm=0.0,
                    use_8bit_adam=False)),
        ("cd+cr", dict(lr=5e-6, token_lr=0.000625, cd_scope="kv+q+out", num_vectors=2, reg_weight=1e-5)),
    ],
)
def test_method_defaults_follow_the_papers(method, expected):
    resolved = TrainConfig.from_dict({**REQUIRED, "method": method}).resolved()
    assert {key: getattr(resolved, key) for key in expected} == expected
    assert resolved.token == "<new1>" and resolved.prior_loss_weight == 1.0


def test_user_values_win_over_defaults():
    resolved = TrainConfig.from_dict({**REQUIRED, "method": "cr", "steps": 7, "token_lr": 0.01}).resolved()
    assert (resolved.steps, resolved.lr, resolved.token_lr) == (7, None, 0.01)


def test_unknown_key_lists_the_allowed_ones():
    with pytest.raises(TrainConfigError, match=r"training config: unknown keys \['learning_rate'\].*allowed keys.*'lr'"):
        TrainConfig.from_dict({**REQUIRED, "method": "cd", "learning_rate": 1e-5})


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(method="dreambooth"), "method must be one of"),
        (dict(method="cd", cd_scope="all"), "cd_scope must be one of"),
        (dict(method="cd", resolution=100), "multiple of 8"),
        (dict(method="cd", token="two words"), "without spaces"),
        (dict(method="cd", prompt="photo of a person"), "must contain {}"),
        (dict(method="cd", steps=0), "steps must be >= 1"),
        (dict(method="cd", mixed_precision="fp8"), "mixed_precision"),
        (dict(method="cd", photos=None), "missing required"),
    ],
)
def test_bad_values_say_what_to_change(change, message):
    with pytest.raises(TrainConfigError, match=message):
        TrainConfig.from_dict({**REQUIRED, **change})


def test_cd_scope_is_refused_for_cross_initialization():
    with pytest.raises(TrainConfigError, match=r"cd_scope is a field of method cd / cd\+cr, not of cr"):
        TrainConfig.from_dict({**REQUIRED, "method": "cr", "cd_scope": "kv"}).resolved()


@pytest.mark.parametrize("suffix, text", [
    (".yaml", "base: model\nphotos: photos\nout: out\nmethod: cd\nsteps: 12\nreg-dir: reg\n"),
    (".toml", 'base = "model"\nphotos = "photos"\nout = "out"\nmethod = "cd"\nsteps = 12\nreg_dir = "reg"\n'),
])
def test_file_and_flag_overrides(tmp_path, suffix, text):
    path = tmp_path / f"train{suffix}"
    path.write_text(text)
    config = TrainConfig.from_file(path, steps=3, lr=None)
    assert (config.steps, config.reg_dir, config.lr) == (3, "reg", None)


def test_unknown_key_in_file_is_an_error(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("base: m\nphotos: p\nout: o\nmethod: cd\nstep: 3\n")
    with pytest.raises(TrainConfigError, match=r"training config: unknown keys \['step'\]"):
        TrainConfig.from_file(path)
