"""The toy experiments are configs for the one runner; the population run's claims hold on held-out subjects.

The slow test is the CI-sized population run: two test subjects drawn from a seed (never the shipped face, never a
tuning subject), the shipped training, run through `subjectgen experiment`. Its thresholds come from the full
population run's spread over test subjects (training/toy/README.md, "A population of faces"), never from this run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

from training.experiment import load_experiment_config
from training.experiment.config import ExperimentConfigError
from training.toy import world
from training.toy.models import has_weights
from training.toy.prompt_check import requested
from training.toy.subject_photos import parse_subject_spec

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
SETUPS = ("cd-noreg", "cd-reg-base", "cd-reg-alt", "cr", "cd+cr-reg")
needs_weights = pytest.mark.skipif(not has_weights(), reason="toy weights not shipped: python -m training.toy.train_base")


def test_toy_experiments_are_configs_for_the_one_runner_with_valid_train_configs():
    from training.train_config import TrainConfig

    for name in ("five_setups_toy", "five_setups_toy_population"):
        config = load_experiment_config(name)
        assert "runner" not in yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        assert tuple(s.name for s in config.setups) == SETUPS
        assert {s.regularization for s in config.setups} == {None, "base", "alt"}
        assert config.evaluate.face_model == "toy" and config.evaluate.prompt_scorer == "toy"
        for setup in config.setups:
            values = {**config.train, **setup.train, "base": "b", "photos": "p", "method": setup.method, "out": "o"}
            resolved = TrainConfig.from_dict(values).resolved()
            assert resolved.resolution == 32 and resolved.flip_p == 0.0, setup.name  # a flip would move the mark
    single, population = load_experiment_config("five_setups_toy"), load_experiment_config("five_setups_toy_population")
    # the population runs exactly the shipped experiment, on other subjects
    for field in ("base", "setups", "regularizations", "train", "generate", "evaluate", "baseline"):
        assert getattr(single, field) == getattr(population, field), field
    assert [s.photos for s in single.subjects] == ["toy:shipped"]


def test_population_subjects_are_drawn_from_seeds_with_disjoint_tuning_and_test_sets():
    config = load_experiment_config("five_setups_toy_population")
    groups = {"tuning": [], "test": []}
    for subject in config.subjects:
        groups[subject.group].append(subject.photos)
    assert len(groups["tuning"]) >= 2 and len(groups["test"]) >= 8
    assert not set(groups["tuning"]) & set(groups["test"])
    faces = {photos: parse_subject_spec(photos.removeprefix("toy:"))[0] for photos in groups["tuning"] + groups["test"]}
    assert world.DEFAULT_SUBJECT not in faces.values()  # the shipped face tuned issue 6; it is in neither set
    assert len(set(faces.values())) == len(faces)  # different seeds, different faces


def test_prompts_ask_for_backgrounds_the_photos_never_show_and_each_accessory():
    config = load_experiment_config("five_setups_toy")
    prompts = [p for p in config.generate.prompts]
    asked = [requested(p) for p in prompts]
    photo_backgrounds = {spec.background for spec in world.DEFAULT_SUBJECT.photo_specs(6)}
    assert photo_backgrounds == set(world.PHOTO_BACKGROUNDS)
    assert all(a["background"] not in photo_backgrounds for a in asked)
    assert {a.get("accessory") for a in asked} == {None, "hat", "glasses"}


def test_runner_hatch_is_gone_and_unknown_keys_still_fail(tmp_path):
    data = yaml.safe_load((CONFIGS / "five_setups_toy.yaml").read_text())
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({**data, "runner": "training.toy.experiment:run_config_file"}))
    with pytest.raises(ExperimentConfigError, match="allowed keys"):
        load_experiment_config(path)


def ci_sized(config_path: Path, subjects: list[dict]) -> dict:
    """The population config with its regularisation sets and samples cut to CI size; the training is unchanged."""
    data = yaml.safe_load(config_path.read_text())
    data["subjects"] = subjects
    for spec in data["regularizations"].values():
        spec["num"] = 16
    data["generate"]["num_per_prompt"] = 4
    return data


def _overall(summary, subject, setup):
    return next(r["overall"] for r in summary["runs"] if r["subject"] == subject and r["setup"] == setup)


@pytest.mark.slow
@needs_weights
def test_every_setup_learns_held_out_subjects_and_keeps_new_scenes(tmp_path):
    population = load_experiment_config("five_setups_toy_population")
    test_subjects = [dataclasses.asdict(s) for s in population.subjects if s.group == "test"][:2]
    config_file = tmp_path / "toy_ci.yaml"
    config_file.write_text(yaml.safe_dump(ci_sized(CONFIGS / "five_setups_toy_population.yaml", test_subjects)))
    out = tmp_path / "toy"
    result = run_cli("experiment", str(config_file), "--out", str(out), env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(out / "summary.json") in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert [s["source"] for s in summary["subjects"]] == ["toy:seed=100", "toy:seed=101"]
    print(json.dumps({f"{r['subject']}/{r['setup']}": r["overall"] for r in summary["runs"]}, indent=1))

    # Thresholds from the full-size population run (training/toy/README.md, "A population of faces"), never from
    # this run. There, not every setup beat the baseline on every subject (cd+cr-reg on test-101: -0.005; cd-noreg on
    # tune-1: -0.036), so the likeness bar is on the two subjects' mean: the full run's smallest mean gain on these
    # test subjects was +0.128 (cd-noreg), traits +0.255 (cd-noreg), hidden mark 0.141 for the regularised CD rows
    # and CD+CR together against 0 for the baseline and CR; every background kept; CR kept the hat and glasses
    # (1.0 like the baseline); the worst prompt-following was the baseline's - 0.25 (cd-reg-alt on test-101).
    subjects = ("test-100", "test-101")

    def mean(setup, key, part=None):
        values = [_overall(summary, s, setup) for s in subjects]
        return sum((o[key] if part is None else o[key][part])["mean"] for o in values) / len(values)

    for setup in SETUPS:
        why = (setup, {s: _overall(summary, s, setup) for s in subjects})
        assert mean(setup, "identity") >= mean("baseline", "identity") + 0.05, why  # likeness beats the baseline
        assert mean(setup, "identity_parts", "traits") >= mean("baseline", "identity_parts", "traits") + 0.1, why
        for subject in subjects:  # backgrounds the photos never show are drawn, by every row for every subject
            assert _overall(summary, subject, setup)["prompt_checks"]["background"]["mean"] >= 0.85, (subject, why)
        assert mean(setup, "prompt_following") >= mean("baseline", "prompt_following") - 0.35, why
    # The headline, apart from the traits: weight tuning with regularisation (and CD+CR) draws the unnamed mark;
    # CR's tokens alone do not.
    base_mark = mean("baseline", "identity_parts", "hidden_mark")
    tuned_mark = sum(mean(s, "identity_parts", "hidden_mark") for s in ("cd-reg-base", "cd-reg-alt", "cd+cr-reg")) / 3
    assert tuned_mark >= base_mark + 0.05, tuned_mark
    assert mean("cr", "identity_parts", "hidden_mark") <= base_mark + 0.05
    # Accessories, each against the baseline's own rate: CR keeps the hat and the glasses (one lost image in the
    # 8 per accessory is 0.125). The CD rows lost the glasses on these subjects in the full run: not asserted.
    for accessory in ("hat", "glasses"):
        assert mean("cr", "prompt_checks", accessory) >= mean("baseline", "prompt_checks", accessory) - 0.25, accessory

    assert "| cd+cr-reg |" in (out / "summary.md").read_text() and (out / "report.html").is_file()
    assert summary["across_subjects"]["test"]["subjects"] == list(subjects)

    # Resume: a second run finds every stage done and writes the same numbers without retraining.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("subject.safetensors")}
    again = run_cli("experiment", str(config_file), "--out", str(out), env={"OMP_NUM_THREADS": "1"})
    assert again.returncode == 0 and "[run ]" not in again.stderr
    assert before and before == {p: p.stat().st_mtime_ns for p in out.rglob("subject.safetensors")}
    assert json.loads((out / "summary.json").read_text())["runs"] == summary["runs"]
