"""The toy experiments are configs for the one runner; the population run's claims hold on held-out subjects.

The slow test is the CI-sized population run: the population's first test subject, drawn from a seed (never the
shipped face, never a tuning subject), the shipped training, run through `subjectgen experiment`. Its thresholds are
read from the shipped population run's numbers for the same subject (half of each effect: see ``ci_claims``), never
from this run.
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
    from subjectgen_training.trainer.config import TrainConfig

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


POPULATION_SUMMARY = Path(__file__).resolve().parents[1] / "docs" / "results" / "toy_population" / "summary.json"
# The population config's first test subject. Until issue 25's second pass the CI run took the first two; the second,
# test-101, is the population's weakest face for the CD rows (shipped run: cd+cr-reg likeness gain -0.005, hats kept
# 0-25 %), so the pair's bars were test-100's effects diluted by half (a run could lose 87.5 % of the hats and pass).
# One face, with bars at half of its own effects, is the stricter gate at half the cost (~4.5 CPU-minutes less).
CI_SUBJECTS = ("test-100",)
MARK_ROWS = ("cd-reg-base", "cd-reg-alt", "cd+cr-reg")  # the rows the README says draw the unnamed mark
KEPT = 0.5  # a CI run must keep more than this share of every effect the population run measured for its subjects


def _mean(summary: dict, setup: str, key: str, part: str | None = None) -> float:
    values = [_overall(summary, s, setup) for s in CI_SUBJECTS]
    return sum((o[key] if part is None else o[key][part])["mean"] for o in values) / len(values)


def _gain(summary: dict, setup: str, key: str, part: str | None = None) -> float:
    return _mean(summary, setup, key, part) - _mean(summary, "baseline", key, part)


def ci_claims(population: dict) -> list[tuple[str, callable, float]]:
    """Every claim the CI run must meet, each with its bar derived from the shipped population run's numbers for the
    same subjects (which the CI run reproduces on this CPU; another CPU's float differences may flip an image or
    two). The bar is KEPT (half) of the effect the subjects reached there, so a run that loses most of an effect fails:
    - learning (likeness and traits gain over the baseline, every setup; the hidden mark of the regularised CD rows
      and CD+CR above the baseline's): gain >= half the subjects' gain (each of which must be positive there);
    - keeping what the prompt asks (prompt-following, the hat, every setup; CR's glasses; each subject's new
      backgrounds): rate >= half the subjects' rate;
    - CR's tokens alone do not draw the mark: CR's mark gain <= half the regularised CD rows' mark gain.
    Each claim is (name, measure(summary) -> float, bar); "<=" claims are stored negated so every check is >=."""
    claims = []
    for setup in SETUPS:
        for key, part in (("identity", None), ("identity_parts", "traits")):
            effect = _gain(population, setup, key, part)
            assert effect > 0, (setup, key, part, effect)  # the population run learned it on these subjects
            claims.append((f"{setup} {part or key} gain", lambda s, a=(setup, key, part): _gain(s, *a), KEPT * effect))
        for key, part in (("prompt_following", None), ("prompt_checks", "hat")):
            claims.append((f"{setup} {part or key} rate", lambda s, a=(setup, key, part): _mean(s, *a),
                           KEPT * _mean(population, setup, key, part)))
        for subject in CI_SUBJECTS:
            def background(s, subject=subject, setup=setup):
                return _overall(s, subject, setup)["prompt_checks"]["background"]["mean"]
            claims.append((f"{setup} {subject} new backgrounds", background, KEPT * background(population)))
    claims.append(("cr glasses rate", lambda s: _mean(s, "cr", "prompt_checks", "glasses"),
                   KEPT * _mean(population, "cr", "prompt_checks", "glasses")))

    def tuned_mark(s):
        return sum(_gain(s, setup, "identity_parts", "hidden_mark") for setup in MARK_ROWS) / len(MARK_ROWS)

    assert tuned_mark(population) > 0
    claims.append(("mark of the regularised CD rows", tuned_mark, KEPT * tuned_mark(population)))
    claims.append(("cr mark stays below half the tuned rows' (negated)",
                   lambda s: -_gain(s, "cr", "identity_parts", "hidden_mark"), -KEPT * tuned_mark(population)))
    return claims


def failed_claims(summary: dict, population: dict) -> list[str]:
    return [f"{name}: {measure(summary):.3f} < bar {bar:.3f}" for name, measure, bar in ci_claims(population)
            if not measure(summary) >= bar - 1e-9]


def test_ci_bars_come_from_the_shipped_population_run_and_fail_when_most_of_an_effect_is_lost():
    """The bars are read from the shipped summary (no hand-typed numbers); the CI subjects' own population numbers pass
    them, and for every claim a copy of those numbers with the effect cut to 40 % of itself fails that claim."""
    import copy

    population = json.loads(POPULATION_SUMMARY.read_text())
    assert population["experiment"] == "five_setups_toy_population"
    tests = [s["name"] for s in population["subjects"] if s["group"] == "test"]
    assert tuple(tests[:len(CI_SUBJECTS)]) == CI_SUBJECTS  # the subjects the CI run draws, held out in that run
    assert failed_claims(population, population) == []
    claims = ci_claims(population)
    for name, measure, bar in claims:
        assert bar > 0 or name.startswith("cr mark"), (name, bar)  # every bar asks for something

    def lose(summary, setup, key, part, subjects=CI_SUBJECTS, mark_gain=False):
        """Keep 40 % of the effect: of the gain over the baseline (learning), or of the rate (keeping)."""
        for subject in subjects:
            entry = _overall(summary, subject, setup)
            entry = entry[key] if part is None else entry[key][part]
            base = _overall(summary, subject, "baseline")
            base = (base[key] if part is None else base[key][part])["mean"]
            entry["mean"] = base + 0.4 * (entry["mean"] - base) if mark_gain else 0.4 * entry["mean"]

    cases = {}
    for setup in SETUPS:
        for key, part in (("identity", None), ("identity_parts", "traits")):
            cases[f"{setup} {part or key} gain"] = dict(setup=setup, key=key, part=part, mark_gain=True)
        for key, part in (("prompt_following", None), ("prompt_checks", "hat")):
            cases[f"{setup} {part or key} rate"] = dict(setup=setup, key=key, part=part)
        for subject in CI_SUBJECTS:
            cases[f"{setup} {subject} new backgrounds"] = dict(setup=setup, key="prompt_checks", part="background",
                                                               subjects=(subject,))
    cases["cr glasses rate"] = dict(setup="cr", key="prompt_checks", part="glasses")
    assert set(cases) | {"mark of the regularised CD rows", "cr mark stays below half the tuned rows' (negated)"} \
        == {name for name, _, _ in claims}
    for name, case in cases.items():
        degraded = copy.deepcopy(population)
        lose(degraded, **case)
        assert any(f.startswith(f"{name}:") for f in failed_claims(degraded, population)), name
    degraded = copy.deepcopy(population)
    for setup in MARK_ROWS:
        lose(degraded, setup, "identity_parts", "hidden_mark", mark_gain=True)
    assert any(f.startswith("mark of the regularised CD rows:") for f in failed_claims(degraded, population))
    degraded = copy.deepcopy(population)  # CR drawing the mark as much as the tuned rows do
    tuned = sum(_gain(population, s, "identity_parts", "hidden_mark") for s in MARK_ROWS) / len(MARK_ROWS)
    for subject in CI_SUBJECTS:
        _overall(degraded, subject, "cr")["identity_parts"]["hidden_mark"]["mean"] += tuned
    assert any(f.startswith("cr mark stays below") for f in failed_claims(degraded, population))


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
@pytest.mark.long(minutes=5)
def test_every_setup_learns_held_out_subjects_and_keeps_new_scenes(tmp_path):
    population = load_experiment_config("five_setups_toy_population")
    test_subjects = [dataclasses.asdict(s) for s in population.subjects if s.group == "test"][:len(CI_SUBJECTS)]
    config_file = tmp_path / "toy_ci.yaml"
    config_file.write_text(yaml.safe_dump(ci_sized(CONFIGS / "five_setups_toy_population.yaml", test_subjects)))
    out = tmp_path / "toy"
    result = run_cli("experiment", str(config_file), "--out", str(out), env={"OMP_NUM_THREADS": "1"}, timeout=2400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(out / "summary.json") in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert [s["source"] for s in summary["subjects"]] == ["toy:seed=100"]
    print(json.dumps({f"{r['subject']}/{r['setup']}": r["overall"] for r in summary["runs"]}, indent=1))
    subjects = CI_SUBJECTS

    # Every bar is half of what the shipped population run measured for these subjects (see ci_claims).
    population = json.loads(POPULATION_SUMMARY.read_text())
    assert failed_claims(summary, population) == []
    assert "| cd+cr-reg |" in (out / "summary.md").read_text() and (out / "report.html").is_file()
    assert summary["across_subjects"]["test"]["subjects"] == list(subjects)

    # Resume: a second run finds every stage done and writes the same numbers without retraining.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("subject.safetensors")}
    again = run_cli("experiment", str(config_file), "--out", str(out), env={"OMP_NUM_THREADS": "1"})
    assert again.returncode == 0 and "[run ]" not in again.stderr
    assert before and before == {p: p.stat().st_mtime_ns for p in out.rglob("subject.safetensors")}
    assert json.loads((out / "summary.json").read_text())["runs"] == summary["runs"]
