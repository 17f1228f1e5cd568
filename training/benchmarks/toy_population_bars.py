"""How much the pair of faces decides each claim of the CI toy test, from the spread of the full population run:
``python -m subjectgen_training.benchmarks.toy_population_bars runs/toy-population/summary.json``.

The CI test (``tests/test_toy_experiment.py``) runs two of the population's test subjects and asserts on their mean,
with bars read from this run's numbers for that pair (half of each effect). Each value here is the worst that claim
takes over *every pair* of the full run's test subjects: for each setup, the smallest two-subject mean of its gain over
the subjects' own baselines (likeness, traits, prompt-following, hat, glasses), the smallest single-subject rate of
the new backgrounds, the smallest pair mean of the hidden mark of the regularised CD rows and CD+CR above the
baseline's, and the largest pair mean of CR's hidden mark above the baseline's. Prints a markdown table and a JSON
object (``--json FILE`` writes it).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

MARK_ROWS = ("cd-reg-base", "cd-reg-alt", "cd+cr-reg")  # the rows the README says draw the unnamed mark


def _scores(run: dict) -> dict[str, float]:
    overall = run["overall"]
    checks = overall["prompt_checks"]
    return {"likeness": overall["identity"]["mean"], "mark": overall["identity_parts"]["hidden_mark"]["mean"],
            "traits": overall["identity_parts"]["traits"]["mean"], "prompt_following": overall["prompt_following"]["mean"],
            "background": checks["background"]["mean"], "hat": checks["hat"]["mean"], "glasses": checks["glasses"]["mean"]}


def population_bars(summary: dict, group: str = "test", mark_rows: tuple[str, ...] = MARK_ROWS) -> dict:
    """The worst pair's value of each claim; ``mark_rows``: the weight-tuning rows whose mean hidden mark above the
    baseline's is one claim (a CI run of fewer setups names its own)."""
    subjects = [s["name"] for s in summary["subjects"] if s["group"] == group]
    scores = {(r["subject"], r["setup"]): _scores(r) for r in summary["runs"]}
    setups = [s["name"] for s in summary["setups"] if s["name"] != "baseline"]
    pairs = list(itertools.combinations(subjects, 2))

    def gain(subject, setup, key):
        return scores[(subject, setup)][key] - scores[(subject, "baseline")][key]

    def worst_pair(value, pick=min):
        return pick((value(a) + value(b)) / 2 for a, b in pairs)

    bars = {"subjects": subjects, "pairs": len(pairs), "setups": {}}
    for setup in setups:
        bars["setups"][setup] = {
            **{f"{key} gain": worst_pair(lambda s, key=key: gain(s, setup, key))
               for key in ("likeness", "traits", "prompt_following", "hat", "glasses")},
            "background": min(scores[(s, setup)]["background"] for s in subjects),
            "beats baseline": sum(gain(s, setup, "likeness") > 0 for s in subjects),
        }
    bars["mark rows above baseline"] = worst_pair(
        lambda s: sum(gain(s, setup, "mark") for setup in mark_rows) / len(mark_rows))
    bars["cr mark above baseline"] = worst_pair(lambda s: gain(s, "cr", "mark"), pick=max)
    return bars


def markdown(bars: dict) -> str:
    keys = ["likeness gain", "traits gain", "prompt_following gain", "hat gain", "glasses gain", "background"]
    lines = [f"worst pair of {len(bars['subjects'])} test subjects ({bars['pairs']} pairs); background: worst subject",
             "", "| setup | beats baseline | " + " | ".join(keys) + " |", "| --- | ---: |" + " ---: |" * len(keys)]
    for setup, row in bars["setups"].items():
        lines.append(f"| {setup} | {row['beats baseline']}/{len(bars['subjects'])} | "
                     + " | ".join(f"{row[k]:+.3f}" if "gain" in k else f"{row[k]:.3f}" for k in keys) + " |")
    lines += ["", f"hidden mark of {', '.join(MARK_ROWS)} above the baseline's (worst pair): "
              f"{bars['mark rows above baseline']:+.3f}; CR's above the baseline's (largest pair): "
              f"{bars['cr mark above baseline']:+.3f}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("summary", type=Path, help="summary.json of a five_setups_toy_population run")
    parser.add_argument("--group", default="test", help="subject group to read (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="also write the bars to this file")
    args = parser.parse_args(argv)
    bars = population_bars(json.loads(args.summary.read_text(encoding="utf-8")), args.group)
    print(markdown(bars))
    if args.json:
        args.json.write_text(json.dumps(bars, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
