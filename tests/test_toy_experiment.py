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
from _cli import run_cli

from subjectgen_training.experiment import load_experiment_config
from subjectgen_training.experiment.config import ExperimentConfigError
from subjectgen_training.toy import world
from subjectgen_training.toy.models import has_weights
from subjectgen_training.toy.prompt_check import requested
from subjectgen_training.toy.subject_photos import parse_subject_spec

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
SETUPS = ("cd-noreg", "cd-reg-base", "cd-reg-alt", "cr", "cd+cr-reg")
needs_weights = pytest.mark.skipif(not has_weights(), reason="toy weights not shipped: python -m subjectgen_training.toy.train_base")


def test_toy_experiments_are_configs_for_the_one_runner_with_valid_train_configs():
    from subjectgen_training.train_config import TrainConfig

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
    path.write_text(yaml.safe_dump({**data, "runner": "subjectgen_training.toy.experiment:run_config_file"}))
    with pytest.raises(ExperimentConfigError, match="allowed keys"):
        load_experiment_config(path)


def ci_sized(config_path: Path, subjects: list[dict]) -> dict:
    """The population config cut to ``subjects`` and nothing else: the same training (its 64 regularisation images
    included: with 16 the prior was weaker and the regularised CD rows lost half their new backgrounds on test-101)
    and the same prompts and seeds, so on this CPU the CI run reproduces the full run's numbers for its subjects."""
    data = yaml.safe_load(config_path.read_text())
    data["subjects"] = subjects
    return data


def _overall(summary, subject, setup):
    return next(r["overall"] for r in summary["runs"] if r["subject"] == subject and r["setup"] == setup)


# Bars from the full population run (training/toy/README.md, "A population of faces"): the worst value each claim took
# over all 28 pairs of its 8 test subjects, printed by
#   python -m subjectgen_training.benchmarks.toy_population_bars runs/toy-population/summary.json
# Which two faces CI draws must not decide a claim, so the bar is what any pair of held-out faces reached, less one
# image's worth of the CI's sample (float differences between CPUs may flip an image): 0.01 for likeness, traits and
# prompt-following (64 images per setup), 1/32 for a subject's backgrounds, 1/16 for a hat or glasses (16 requests).
WORST_PAIR_GAIN = {  # setup: (likeness, traits, prompt-following, hat) gain over the subjects' own baselines
    "cd-noreg": (0.044, 0.057, -0.227, -0.688),
    "cd-reg-base": (0.143, 0.188, -0.188, -0.625),
    "cd-reg-alt": (0.167, 0.193, -0.227, -0.812),
    "cr": (0.172, 0.339, -0.008, 0.0),
    "cd+cr-reg": (0.052, -0.083, -0.125, -0.438),
}
WORST_PAIR_MARK_ABOVE_BASELINE = 0.042  # cd-reg-base, cd-reg-alt and cd+cr-reg together
LARGEST_PAIR_CR_MARK_ABOVE_BASELINE = 0.016
WORST_PAIR_CR_GLASSES_GAIN = -0.062  # the CD rows lost every glasses on some pairs (-1.0): no bound, not asserted
WORST_SUBJECT_BACKGROUND = {"cd-noreg": 0.75}  # every other setup found every new background on every test subject


POPULATION_SUMMARY = Path(__file__).resolve().parents[1] / "docs" / "results" / "toy_population" / "summary.json"


def test_the_ci_bars_are_the_worst_pairs_of_the_shipped_population_run():
    """The constants above are what the population run's summary (shipped, trimmed) gives, not hand-picked."""
    from subjectgen_training.benchmarks.toy_population_bars import population_bars

    summary = json.loads(POPULATION_SUMMARY.read_text())
    assert summary["experiment"] == "five_setups_toy_population"
    bars = population_bars(summary)
    assert len(bars["subjects"]) == 8 and bars["pairs"] == 28
    ci_subjects = [s["name"] for s in summary["subjects"] if s["group"] == "test"][:2]
    assert ci_subjects == ["test-100", "test-101"]  # the CI's subjects are held-out subjects of that run
    for setup, (likeness, traits, prompt, hat) in WORST_PAIR_GAIN.items():
        row = bars["setups"][setup]
        measured = (row["likeness gain"], row["traits gain"], row["prompt_following gain"], row["hat gain"])
        assert measured == pytest.approx((likeness, traits, prompt, hat), abs=1e-3), setup
        assert row["background"] == pytest.approx(WORST_SUBJECT_BACKGROUND.get(setup, 1.0)), setup
    assert bars["mark rows above baseline"] == pytest.approx(WORST_PAIR_MARK_ABOVE_BASELINE, abs=1e-3)
    assert bars["cr mark above baseline"] == pytest.approx(LARGEST_PAIR_CR_MARK_ABOVE_BASELINE, abs=1e-3)
    assert bars["setups"]["cr"]["glasses gain"] == pytest.approx(WORST_PAIR_CR_GLASSES_GAIN, abs=1e-3)


def test_worst_pair_bars_take_the_worst_two_subject_mean():
    from subjectgen_training.benchmarks.toy_population_bars import population_bars

    def run(subject, setup, likeness, mark=0.0):
        part = lambda v: {"mean": v}  # noqa: E731
        return {"subject": subject, "setup": setup, "overall": {
            "identity": part(likeness), "prompt_following": part(1.0),
            "identity_parts": {"hidden_mark": part(mark), "traits": part(likeness)},
            "prompt_checks": {"background": part(1.0), "hat": part(1.0), "glasses": part(1.0)}}}

    gains = {"a": 0.4, "b": -0.1, "c": 0.2}  # pairs: (a,b) 0.15, (a,c) 0.3, (b,c) 0.05
    summary = {"subjects": [{"name": n, "group": "test"} for n in gains] + [{"name": "t", "group": "tuning"}],
               "setups": [{"name": s} for s in ("baseline", "cd-reg-base", "cd-reg-alt", "cd+cr-reg", "cr")],
               "runs": [run(n, "baseline", 0.1) for n in [*gains, "t"]]
               + [run(n, s, 0.1 + g, mark=g) for n, g in gains.items() for s in ("cd-reg-base", "cd-reg-alt", "cd+cr-reg", "cr")]}
    bars = population_bars(summary)
    assert bars["pairs"] == 3 and bars["subjects"] == ["a", "b", "c"]
    assert bars["setups"]["cr"]["likeness gain"] == pytest.approx(0.05)
    assert bars["setups"]["cr"]["beats baseline"] == 2
    assert bars["mark rows above baseline"] == pytest.approx(0.05)
    assert bars["cr mark above baseline"] == pytest.approx(0.3)


@pytest.mark.slow
@needs_weights
def test_every_setup_learns_held_out_subjects_and_keeps_new_scenes(tmp_path):
    population = load_experiment_config("five_setups_toy_population")
    test_subjects = [dataclasses.asdict(s) for s in population.subjects if s.group == "test"][:2]
    config_file = tmp_path / "toy_ci.yaml"
    config_file.write_text(yaml.safe_dump(ci_sized(CONFIGS / "five_setups_toy_population.yaml", test_subjects)))
    out = tmp_path / "toy"
    result = run_cli("experiment", str(config_file), "--out", str(out), env={"OMP_NUM_THREADS": "1"}, timeout=2400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(out / "summary.json") in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert [s["source"] for s in summary["subjects"]] == ["toy:seed=100", "toy:seed=101"]
    print(json.dumps({f"{r['subject']}/{r['setup']}": r["overall"] for r in summary["runs"]}, indent=1))
    subjects = ("test-100", "test-101")

    def mean(setup, key, part=None):
        values = [_overall(summary, s, setup) for s in subjects]
        return sum((o[key] if part is None else o[key][part])["mean"] for o in values) / len(values)

    def gain(setup, key, part=None):
        return mean(setup, key, part) - mean("baseline", key, part)

    for setup in SETUPS:
        likeness, traits, prompt, hat = WORST_PAIR_GAIN[setup]
        why = (setup, {s: _overall(summary, s, setup) for s in subjects})
        assert likeness > 0 and gain(setup, "identity") >= likeness - 0.01, why  # every setup learns the face
        assert gain(setup, "identity_parts", "traits") >= traits - 0.01, why
        assert gain(setup, "prompt_following") >= prompt - 0.01, why
        assert gain(setup, "prompt_checks", "hat") >= hat - 1 / 16, why
        for subject in subjects:  # backgrounds the photos never show
            found = _overall(summary, subject, setup)["prompt_checks"]["background"]["mean"]
            assert found >= WORST_SUBJECT_BACKGROUND.get(setup, 1.0) - 1 / 32, (subject, why)
    # The headline, apart from the traits: weight tuning with regularisation (and CD+CR) draws the unnamed mark;
    # CR's tokens alone do not.
    tuned = sum(gain(s, "identity_parts", "hidden_mark") for s in ("cd-reg-base", "cd-reg-alt", "cd+cr-reg")) / 3
    assert tuned >= WORST_PAIR_MARK_ABOVE_BASELINE - 0.01, tuned
    assert gain("cr", "identity_parts", "hidden_mark") <= LARGEST_PAIR_CR_MARK_ABOVE_BASELINE + 0.01
    assert gain("cr", "prompt_checks", "glasses") >= WORST_PAIR_CR_GLASSES_GAIN - 1 / 16  # CR keeps the glasses

    assert "| cd+cr-reg |" in (out / "summary.md").read_text() and (out / "report.html").is_file()
    assert summary["across_subjects"]["test"]["subjects"] == list(subjects)

    # Resume: a second run finds every stage done and writes the same numbers without retraining.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("subject.safetensors")}
    again = run_cli("experiment", str(config_file), "--out", str(out), env={"OMP_NUM_THREADS": "1"})
    assert again.returncode == 0 and "[run ]" not in again.stderr
    assert before and before == {p: p.stat().st_mtime_ns for p in out.rglob("subject.safetensors")}
    assert json.loads((out / "summary.json").read_text())["runs"] == summary["runs"]
