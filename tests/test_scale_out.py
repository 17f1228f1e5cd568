"""Scale-out: the experiment's stage graph and ``subjectgen batch`` on a local Ray cluster (issue 26).

One Ray cluster for the module (``ray.init(num_cpus=2)`` on 127.0.0.1, stopped after); the CLI runs in real
subprocesses that join it with ``--ray-address``. The toy model and toy photo sources keep every run to seconds.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from _cli import REPO_ROOT, cli_command, cli_env, run_cli

TOY_TRAIN = {"scale_lr": False, "resolution": 32, "flip_p": 0.0, "random_rescale": False, "caption_templates": False,
             "prompt": "a {} cartoon face", "class_prompt": "a cartoon face", "seed": 0}
TOY_GENERATE = {"prompts": ["{}, on a yellow background"], "subject_phrase": "a {} cartoon face",
                "class_phrase": "a cartoon face", "num_per_prompt": 2, "seed": 1000, "steps": 4, "guidance": 4.0,
                "resolution": 32, "batch_size": 2}
TOY_EVALUATE = {"face_model": "toy", "prompt_scorer": "toy", "subject_phrase": "a cartoon face"}
SETUP = {"name": "cdcr", "method": "cd+cr", "train": {"steps": 6, "lr": 2.0e-3, "token_lr": 4.0e-2, "batch_size": 2}}


def toy_experiment(path, subjects: dict[str, str]):
    data = {"name": "ray-toy", "base": "builtin:toy-base", "setups": [SETUP], "train": TOY_TRAIN, "baseline": False,
            "subjects": [{"name": name, "photos": photos} for name, photos in subjects.items()],
            "generate": TOY_GENERATE, "evaluate": TOY_EVALUATE}
    path.write_text(yaml.safe_dump(data))
    return path


def people_file(path, people: dict[str, str]):
    data = {"base": "builtin:toy-base", "train": {**TOY_TRAIN, "method": "cd+cr", **SETUP["train"]},
            "people": [{"name": name, "photos": photos, "token": f"<{name}>"} for name, photos in people.items()],
            "generate": TOY_GENERATE, "evaluate": TOY_EVALUATE}
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def ray_address():
    ray = pytest.importorskip("ray")
    context = ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()


def _markers(root, pattern="stages/*.json"):
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.glob(pattern)}


def _numbers(summary):
    return {"runs": [(r["subject"], r["setup"], r["overall"]) for r in summary["runs"]],
            "per_setup": summary["per_setup"], "across_subjects": summary["across_subjects"]}


def _safetensors(path):
    """(header with its metadata, tensor bytes): safetensors writes the metadata map in a per-process random order
    (a Rust HashMap), so the header is compared parsed and the tensor data byte for byte."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + size]), data[8 + size:]


@pytest.mark.slow
@pytest.mark.long(minutes=2)
def test_ray_killed_and_rerun_gives_the_local_results_without_redoing_finished_stages(tmp_path, ray_address):
    # One subject: photos, train, generate, evaluate (4 stages); the driver is killed once the training is done.
    config = toy_experiment(tmp_path / "exp.yaml", {"a": "toy:seed=100"})
    local, out = tmp_path / "local", tmp_path / "ray"
    serial = run_cli("--threads", "1", "experiment", str(config), "--out", str(local))  # Ray stages: 1 CPU, 1 thread
    assert serial.returncode == 0, serial.stderr[-3000:]

    args = ["experiment", str(config), "--out", str(out), "--executor", "ray", "--ray-address", ray_address]
    driver = subprocess.Popen(cli_command(args), cwd=REPO_ROOT, env=cli_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not list((out / "stages").glob("train-*.json")):  # a training finished: kill the driver
        assert driver.poll() is None and time.monotonic() < deadline, "no training finished"
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = _markers(out)
    assert 0 < len(before) < 4 and not (out / "summary.json").exists()  # stopped midway

    rerun = subprocess.run(cli_command(args), cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = _markers(out)
    assert {name: after[name] for name in before} == before  # no finished stage was redone
    done = int(re.search(r"(\d+) of 4 stages already done", rerun.stderr).group(1))
    assert len(before) <= done < 4 and f"submitted {4 - done} stage(s) to Ray" in rerun.stderr

    one, two = (json.loads((root / "summary.json").read_text()) for root in (local, out))
    assert _numbers(one) == _numbers(two) and set(_markers(local)) == set(after)
    files = sorted(p.relative_to(local) for p in (local / "runs").rglob("*") if p.suffix in (".safetensors", ".png"))
    assert [p.suffix for p in files].count(".safetensors") == 1 and [p.suffix for p in files].count(".png") == 2
    for name in files:
        if name.suffix == ".png":
            assert (local / name).read_bytes() == (out / name).read_bytes(), name
        else:
            assert _safetensors(local / name) == _safetensors(out / name), name


@pytest.mark.slow
@pytest.mark.long
def test_a_failing_stage_is_reported_by_name_while_the_others_finish(tmp_path, ray_address):
    from subjectgen_training.experiment import load_experiment_config, run_experiment
    from subjectgen_training.experiment.executors import ExecutorSpec
    from subjectgen_training.experiment.runner import ExperimentError

    config = toy_experiment(tmp_path / "exp.yaml", {"good": "toy:seed=100", "bad": "toy:seed=x"})
    out = tmp_path / "ray"
    with pytest.raises(ExperimentError) as error:  # in this process: the module's Ray is already connected
        run_experiment(load_experiment_config(config), out, ExecutorSpec("ray"))
    message = str(error.value)
    assert message.startswith("1 stage(s) failed: photos-bad: ToySubjectSpecError: toy:seed=x"), message
    assert "3 stage(s) that need them did not run" in message
    assert set(_markers(out)) == {f"stages/{kind}-good{suffix}.json" for kind, suffix in [
        ("photos", ""), ("train", "-cdcr"), ("generate", "-cdcr"), ("evaluate", "-cdcr")]}
    assert not (out / "summary.json").exists()


@pytest.mark.slow
@pytest.mark.long
def test_batch_trains_three_people_then_only_the_fourth(tmp_path, ray_address):
    people = {"ana": "toy:seed=100", "bo": "toy:seed=101", "cy": "toy:seed=102"}
    out = tmp_path / "batch"
    from subjectgen_training.experiment.batch import load_batch_config, run_batch
    from subjectgen_training.experiment.executors import ExecutorSpec

    path, failed = run_batch(load_batch_config(people_file(tmp_path / "people.yaml", people)), out, ExecutorSpec("ray"))
    assert failed == [] and path == out / "batch.json"
    record = json.loads((out / "batch.json").read_text())
    assert [(p["name"], p["status"]) for p in record["people"]] == [(n, "done") for n in people]
    for person in record["people"]:
        assert set(person["files"]) == {"subject", "preview", "images", "results"}
        assert 0.0 <= person["scores"]["identity"] <= 1.0 and "prompt_following" in person["scores"]
        assert (out / person["name"] / "subject" / "subject.safetensors").is_file()
    before = _markers(out, "*/stages/*.json")
    assert len(before) == 3 * 4

    more = {**people, "dee": "toy:seed=103", "eve": "toy:seed=nope"}
    second = run_cli("batch", str(people_file(tmp_path / "people.yaml", more)), "--out", str(out))  # local, CLI
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert "1 person(s) did not finish: eve (failed: photos-eve: ToySubjectSpecError" in second.stderr
    after = _markers(out, "*/stages/*.json")
    assert {name: after[name] for name in before} == before  # the first three were not touched
    assert set(after) - set(before) == {f"dee/stages/{k}.json" for k in ("photos", "train", "generate", "evaluate")}
    statuses = {p["name"]: (p["status"], p["error"]) for p in json.loads((out / "batch.json").read_text())["people"]}
    assert statuses["dee"] == ("done", None) and statuses["eve"][0] == "failed" and "seed" in statuses["eve"][1]


def _without_ray(*args):
    code = ("import sys; sys.modules['ray'] = None\nfrom subjectgen_training.cli import main\n"
            f"sys.exit(main({list(args)!r}))")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True,
                          timeout=120)


def test_without_the_ray_extra_the_command_names_it(tmp_path):
    config = toy_experiment(tmp_path / "exp.yaml", {"a": "toy:seed=100"})
    for args in (["experiment", str(config)], ["batch", str(tmp_path / "people.yaml")]):
        result = _without_ray(*args, "--out", str(tmp_path / "out"), "--executor", "ray")
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert result.stderr.strip() == (f"error: `subjectgen {args[0]} --executor ray` needs the 'ray' extra (ray "
                                         f"not installed): pip install \"subjectgen-diffusers[ray]\"")
    assert not (tmp_path / "out").exists()


def test_people_and_resources_are_typed_and_reject_unknown_keys(tmp_path):
    from subjectgen_training.experiment.batch import BatchConfigError, load_batch_config
    from subjectgen_training.experiment.config import ExperimentConfigError, load_experiment_config

    path = people_file(tmp_path / "people.yaml", {"ana": "toy:seed=1"})
    assert load_batch_config(path).people[0].token == "<ana>"
    data = yaml.safe_load(path.read_text())
    for edit, message in [
        (lambda d: d["people"][0].update(tokn="x"), "people[0]: unknown keys ['tokn']"),
        (lambda d: d["train"].update(out="x"), "train: unknown keys ['out']"),
        (lambda d: d["people"].append(dict(d["people"][0])), "must be unique; fix ['ana']"),
        (lambda d: d.update(resources={"training": {}}), "unknown stage kinds ['training']"),
        (lambda d: d.update(resources={"train": {"max_retries": 99}}), "max_retries must be between 0 and 10"),
        (lambda d: d.update(resources={"train": {"gpus": 1}}), "allowed keys are ['num_cpus', 'num_gpus'"),
    ]:
        changed = json.loads(json.dumps(data))
        edit(changed)
        path.write_text(yaml.safe_dump(changed))
        with pytest.raises(BatchConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_batch_config(path)
    experiment = toy_experiment(tmp_path / "exp.yaml", {"a": "toy:seed=1"})
    data = yaml.safe_load(experiment.read_text())
    experiment.write_text(yaml.safe_dump({**data, "resources": {"train": {"num_gpus": 1}, "sample": {}}}))
    with pytest.raises(ExperimentConfigError, match="unknown stage kinds"):
        load_experiment_config(experiment)
    experiment.write_text(yaml.safe_dump({**data, "resources": {"train": {"num_gpus": 1}}}))
    assert load_experiment_config(experiment).resources["train"].num_gpus == 1
