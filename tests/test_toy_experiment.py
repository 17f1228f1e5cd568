"""The toy five-setup experiment: every setup learns the subject (likeness far above the untrained baseline) and still
follows prompts. A CI-sized run of the shipped config with fixed seeds; the full run's numbers are in the README."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

from training.toy.experiment import BASELINE, WEIGHTS, ToyExperimentConfig, ToyExperimentError, run_toy_experiment

CONFIG = Path(__file__).resolve().parents[1] / "training" / "configs" / "five_setups_toy.yaml"
SETUPS = ("cd-noreg", "cd-reg-base", "cd-reg-alt", "cr", "cd+cr-reg")
needs_weights = pytest.mark.skipif(not (WEIGHTS / "toy-base" / "model_index.json").is_file(),
                                   reason="toy weights not shipped yet: train them with `python -m training.toy.train_base`")


def shipped() -> dict:
    return yaml.safe_load(CONFIG.read_text(encoding="utf-8"))


def ci_sized(data: dict) -> dict:
    """Fewer regularisation images and samples: the same training in CI time."""
    return {**data, "reg_num": 16, "num_per_prompt": 4}


def test_shipped_config_holds_the_five_setups_and_each_is_a_valid_train_config(tmp_path):
    from training.train_config import TrainConfig

    config = ToyExperimentConfig.from_file(CONFIG)
    assert tuple(config.setups) == SETUPS
    assert {config.setups[name].reg for name in SETUPS} == {None, "base", "alt"}
    for name, setup in config.setups.items():
        values = {**config.train, **setup.train, "base": "b", "photos": "p", "method": setup.method, "out": "o"}
        resolved = TrainConfig.from_dict(values).resolved()
        assert resolved.resolution == 32 and resolved.flip_p == 0.0, name  # a flip would move the cheek mark


def test_config_errors_name_the_allowed_keys():
    data = shipped()
    with pytest.raises(ToyExperimentError, match="allowed keys"):
        ToyExperimentConfig.from_dict({**data, "setpus": {}})
    with pytest.raises(ToyExperimentError, match="reg must be"):
        ToyExperimentConfig.from_dict({**data, "setups": {"x": {"method": "cd", "reg": "sdxl"}}})
    with pytest.raises(ToyExperimentError, match="reserved"):
        ToyExperimentConfig.from_dict({**data, "setups": {BASELINE: {"method": "cd"}}})
    with pytest.raises(TypeError):
        ToyExperimentConfig.from_dict({**data, "subject": {"hair": "red"}})


@pytest.mark.slow
@needs_weights
def test_every_setup_beats_the_baseline_likeness_and_keeps_prompt_following(tmp_path):
    out = tmp_path / "toy"
    config_file = tmp_path / "five_setups_toy_ci.yaml"
    config_file.write_text(yaml.safe_dump(ci_sized(shipped()), sort_keys=False))
    result = run_cli("experiment", str(config_file), "--out", str(out), env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    summary_path = out / "summary.json"
    assert str(summary_path) in result.stdout
    rows = json.loads(summary_path.read_text())["rows"]
    assert list(rows) == [BASELINE, *SETUPS]
    baseline = rows[BASELINE]
    print(json.dumps(rows, indent=1))
    assert baseline["likeness"] < 0.35
    for name in SETUPS:
        assert rows[name]["likeness"] >= baseline["likeness"] + 0.25, (name, rows[name], baseline)  # measured: +0.32 or more
        assert rows[name]["prompt_following"] >= baseline["prompt_following"] - 0.3, (name, rows[name], baseline)
    for name in rows:
        assert (out / name / "grid.png").is_file()
    assert "| cd+cr-reg |" in (out / "summary.md").read_text()

    # Resume: a second run finds every stage done and rewrites the same summary without retraining.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("subject.safetensors")}
    run_toy_experiment(ToyExperimentConfig.from_dict(ci_sized(shipped())), out)
    assert before and before == {p: p.stat().st_mtime_ns for p in out.rglob("subject.safetensors")}
    assert json.loads(summary_path.read_text())["rows"] == rows


def test_summary_and_report_show_every_row_with_its_likeness_parts_and_grid(tmp_path):
    from PIL import Image

    from training.toy.experiment import write_summary_md
    from training.toy.report import write_report
    from training.toy.subject_photos import write_subject_photos

    write_subject_photos(tmp_path / "photos", count=2)
    rows = {BASELINE: {"likeness": 0.15, "prompt_following": 0.98, "face_found": 1.0, "hidden_mark": 0.0, "traits": 0.3},
            "cd": {"likeness": 0.7, "prompt_following": 0.88, "face_found": 0.9, "hidden_mark": 0.6, "traits": 0.8},
            "old": {"likeness": 0.5, "prompt_following": 0.9, "face_found": 1.0}}  # a row scored before the split
    for name in rows:
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "grid.png")
    table = write_summary_md(tmp_path, rows).read_text()
    assert "| cd | 0.700 | 0.60 | 0.80 | 0.880 | 0.90 | [grid](cd/grid.png) |" in table
    assert "| old | 0.500 | — | — | 0.900 |" in table
    html_text = write_report(tmp_path, rows, ["a {}, on a red background"], "<token> cartoon face").read_text()
    assert "<td>60%</td><td>80%</td>" in html_text and "a &lt;token&gt; cartoon face, on a red background" in html_text
    assert html_text.count('class="grid"') == 3 and html_text.count('src="photos/photo_') == 2
    assert "likeness (mean)" in html_text  # the plot's axis
