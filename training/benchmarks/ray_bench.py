"""Local vs Ray on one machine: ``python -m subjectgen_training.benchmarks.ray_bench [--out DIR]``.

Two workloads, each run twice through the real CLI (``subjectgen --threads 1 ... --executor local`` and
``... --executor ray``, which starts a local Ray with one 1-CPU worker per core and stops it after):

* the toy population experiment (``five_setups_toy_population``) cut to ``--subjects`` test subjects, all five setups
  and the baseline, with ``--steps`` training steps per setup and CI-sized sampling (one prompt per scene kind,
  ``--images`` images each);
* ``subjectgen batch`` with ``--people`` toy people (the same training settings as the experiment's ``cd+cr-reg``
  setup, without regularisation).

For each it prints the wall time of both executors and their ratio, the sum of the stages' own times (from the stage
markers) and what is left (process and Ray start-up, model loads, waiting on the longest chain of stages). Say the
machine's load beside the figures: on a shared CPU they move with it (the script prints ``uptime`` before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from subjectgen_training.experiment.config import config_path


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def population_cut(subjects: int, steps: int, images: int, reg_images: int) -> dict:
    data = yaml.safe_load(config_path("five_setups_toy_population").read_text(encoding="utf-8"))
    for spec in data["regularizations"].values():
        spec["num"] = reg_images
    data["subjects"] = [s for s in data["subjects"] if s.get("group") == "test"][:subjects]
    for setup in data["setups"]:
        setup["train"]["steps"] = steps
    data["generate"].update(num_per_prompt=images, prompts=data["generate"]["prompts"][1:3])
    return data


def people_file(people: int, steps: int, images: int) -> dict:
    population = yaml.safe_load(config_path("five_setups_toy_population").read_text(encoding="utf-8"))
    setup = next(s for s in population["setups"] if s["name"] == "cd+cr-reg")
    train = {**population["train"], **setup["train"], "steps": steps, "method": "cd+cr"}
    train.pop("reg_weight", None)
    generate = {**population["generate"], "num_per_prompt": images}
    generate["prompts"] = generate["prompts"][1:3]
    return {"base": "builtin:toy-base", "train": train, "generate": generate, "evaluate": population["evaluate"],
            "people": [{"name": f"p{i}", "photos": f"toy:seed={200 + i}", "token": f"<p{i}>"} for i in range(people)]}


def _stage_seconds(root: Path) -> float:
    return sum(json.loads(p.read_text())["seconds"] for p in root.glob("**/stages/*.json"))


def _run(args: list[str], out: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "subjectgen_training", "--threads", "1", *args, "--out", str(out)],
                            env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return {"wall_s": round(wall, 1), "stage_s": round(_stage_seconds(out), 1)}


def compare(name: str, args: list[str], root: Path) -> dict:
    row = {"workload": name, "load_before": _uptime()}
    for executor in ("local", "ray"):
        row[executor] = _run([*args, "--executor", executor], root / executor)
    row["ratio"] = round(row["ray"]["wall_s"] / row["local"]["wall_s"], 2)
    row["load_after"] = _uptime()
    print(f"{name}: local {row['local']['wall_s']} s (stages {row['local']['stage_s']} s), ray {row['ray']['wall_s']} s "
          f"(stages {row['ray']['stage_s']} s), ratio {row['ratio']}\n  {row['load_before']}\n  {row['load_after']}",
          flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/ray-bench", help="work folder (emptied first)")
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--people", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30, help="training steps per setup / person")
    parser.add_argument("--images", type=int, default=4, help="images per prompt (2 prompts)")
    parser.add_argument("--reg-images", type=int, default=64, help="images per regularisation set (2 sets)")
    parser.add_argument("--only", choices=("experiment", "batch"), default=None)
    args = parser.parse_args(argv)
    root = Path(args.out)
    if root.exists():
        import shutil

        shutil.rmtree(root)
    root.mkdir(parents=True)
    rows = []
    if args.only in (None, "experiment"):
        config = root / "population_cut.yaml"
        config.write_text(yaml.safe_dump(population_cut(args.subjects, args.steps, args.images, args.reg_images)))
        rows.append(compare(f"experiment ({args.subjects} subjects x 5 setups + baseline, {args.steps} steps, "
                            f"{args.reg_images} regularisation images per set)",
                            ["experiment", str(config)], root / "experiment"))
    if args.only in (None, "batch"):
        people = root / "people.yaml"
        people.write_text(yaml.safe_dump(people_file(args.people, args.steps, args.images)))
        rows.append(compare(f"batch ({args.people} people, {args.steps} steps)", ["batch", str(people)],
                            root / "batch"))
    (root / "ray_bench.json").write_text(json.dumps({"cpus": os.cpu_count(), "rows": rows}, indent=1))
    print(f"figures: {root / 'ray_bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
