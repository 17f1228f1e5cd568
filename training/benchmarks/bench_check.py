"""``train_bench --check``: the measured ratio ours/naive against the goal and against the last recorded results."""

from __future__ import annotations

import statistics
from pathlib import Path

GOALS = {("sd15", "cd"): 0.5}
# How far above the recorded ratio a measured one may lie before it counts as a regression: single timings swing by
# tens of percent on a shared machine (train_bench_results.md), the ratio much less as both loops share the load.
DEFAULT_TOLERANCE = 0.15


CLOCKS = {"wall": "seconds_per_step", "cpu": "cpu_seconds_per_step"}


def ratios(rows: list[dict], clock: str = "wall") -> dict[tuple, float]:
    """``(model, method, resolution) -> ours / naive`` (median step times by ``clock``: ``wall`` seconds, or ``cpu``
    seconds of the process, which a loaded machine's time slicing does not stretch) for every pair present in
    ``rows`` that has that clock. Rows measured as several pairs (``--pairs``; each row's ``pair``, 0 without one)
    give one ratio per pair, each ours over the naive loop measured beside it, and their median counts."""
    key = CLOCKS[clock]
    times = {(r["model"], r["method"], r["resolution"], r.get("pair", 0), r["implementation"]): r[key]
             for r in rows if key in r}
    by_configuration: dict[tuple, list[float]] = {}
    for found in times:
        if found[4] == "ours" and (*found[:4], "naive") in times:
            by_configuration.setdefault(found[:3], []).append(times[found] / times[(*found[:4], "naive")])
    return {configuration: statistics.median(values) for configuration, values in by_configuration.items()}


def check_ratios(measured: dict[tuple, float], recorded: dict[tuple, float], goals: dict[tuple, float],
                 tolerance: float = DEFAULT_TOLERANCE) -> tuple[bool, list[str]]:
    """``(ok, lines)``: one line per measured configuration saying whether it meets its goal and the recorded ratio."""
    ok, lines = True, []
    for key in sorted(measured):
        model, method, resolution = key
        ratio, parts = measured[key], []
        goal = goals.get((model, method))
        if goal is not None:
            met = ratio <= goal
            ok &= met
            parts.append(f"goal <= {goal:.2f}: {'met' if met else 'OFF'}")
        before = recorded.get(key)
        if before is None:
            parts.append("no recorded ratio to compare")
        else:
            held = ratio <= before * (1 + tolerance)
            ok &= held
            parts.append(f"recorded {before:.3f} (+{tolerance:.0%} allowed): {'held' if held else 'OFF, slower than recorded'}")
        lines.append(f"{model} {resolution}px {method}: ratio {ratio:.3f}; " + "; ".join(parts))
    if not measured:
        ok = False
        lines.append("no ours/naive pair to check")
    return ok, lines


def recorded_results(model: str) -> Path:
    return Path(__file__).with_name(f"train_bench_{model}.json")
