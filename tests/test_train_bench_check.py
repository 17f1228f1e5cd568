"""train_bench --check: the ratio ours/naive against the goal and the recorded results (fake rows, nothing timed)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from subjectgen_training.benchmarks.train_bench import GOALS, check_ratios, ratios


def rows(naive: float, ours: float, method: str = "cd", model: str = "sd15") -> list[dict]:
    common = dict(model=model, method=method, resolution=256, steps=3, threads=1, min_seconds_per_step=0.0,
                  peak_rss_gb=1.0)
    return [dict(common, implementation="naive", seconds_per_step=naive),
            dict(common, implementation="ours", seconds_per_step=ours)]


def test_ratios_pair_ours_with_naive_of_the_same_configuration():
    measured = ratios(rows(40.0, 18.0) + rows(40.0, 30.0, method="cr"))
    assert measured == {("sd15", "cd", 256): 0.45, ("sd15", "cr", 256): 0.75}


def test_cpu_clock_pairs_the_cpu_seconds_and_skips_rows_without_them():
    timed = rows(40.0, 30.0)
    timed[0]["cpu_seconds_per_step"], timed[1]["cpu_seconds_per_step"] = 20.0, 9.0  # a loaded wall, a steady CPU
    assert ratios(timed, "cpu") == {("sd15", "cd", 256): 0.45}
    assert ratios(timed) == {("sd15", "cd", 256): 0.75}
    assert ratios(rows(40.0, 18.0), "cpu") == {}  # recorded before CPU time was kept: nothing to compare


def test_repeated_pairs_give_the_median_of_each_pairs_own_ratio():
    measured = []
    for index, (naive, ours) in enumerate(((40.0, 18.0), (50.0, 20.0), (30.0, 30.0))):  # ratios 0.45, 0.40, 1.0
        measured += [dict(row, pair=index) for row in rows(naive, ours)]
    assert ratios(measured) == {("sd15", "cd", 256): 0.45}  # not the last pair's 1.0, not mean times' 68/120
    assert ratios(measured[:4])[("sd15", "cd", 256)] == pytest.approx(0.425)  # two pairs: their mean


def test_check_names_which_bar_is_off():
    recorded = {("sd15", "cd", 256): 0.40, ("sd15", "cr", 256): 0.60}
    ok, lines = check_ratios({("sd15", "cd", 256): 0.44, ("sd15", "cr", 256): 0.65}, recorded, GOALS, 0.15)
    assert ok, lines  # cd under its goal and within 15 % of its record; cr has no goal and held
    ok, lines = check_ratios({("sd15", "cd", 256): 0.48}, recorded, GOALS, 0.15)
    assert not ok and "goal <= 0.50: met" in lines[0] and "OFF, slower than recorded" in lines[0]
    ok, lines = check_ratios({("sd15", "cd", 256): 0.55}, {("sd15", "cd", 256): 0.60}, GOALS, 0.15)
    assert not ok and "goal <= 0.50: OFF" in lines[0] and "held" in lines[0]
    ok, lines = check_ratios({("sd15", "cd", 256): 0.5036}, {}, GOALS)  # just over: the line must not read "0.50"
    assert not ok and lines[0].startswith("sd15 256px cd: ratio 0.504; goal <= 0.50: OFF")
    ok, lines = check_ratios({}, recorded, GOALS)
    assert not ok and lines == ["no ours/naive pair to check"]


def test_check_cli_exits_non_zero_when_off(tmp_path):
    recorded, measured = tmp_path / "recorded.json", tmp_path / "measured.json"
    recorded.write_text(json.dumps(rows(40.0, 18.0)))
    command = [sys.executable, "-m", "subjectgen_training.benchmarks.train_bench", "--model", "sd15", "--check",
               "--recorded", str(recorded), "--results", str(measured)]
    measured.write_text(json.dumps(rows(40.0, 19.0)))
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sd15 256px cd: ratio 0.475; goal <= 0.50: met; recorded 0.450" in done.stdout and "check: ok" in done.stdout
    measured.write_text(json.dumps(rows(40.0, 24.0)))
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 1 and "goal <= 0.50: OFF" in done.stdout and "check: OFF" in done.stdout
    done = subprocess.run(command[:-1] + [str(tmp_path / "missing.json")], capture_output=True, text=True)
    assert done.returncode == 2 and "error: --results: no file" in done.stderr and "Traceback" not in done.stderr
