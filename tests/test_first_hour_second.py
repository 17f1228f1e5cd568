"""A new user's first hour, second pass (issue 24): the toy model by name everywhere, a no-flag run that uses the toy
recipe, an interrupt whose message and behaviour agree, a recorded config that feeds back, no traceback and no silent
overwrite, token names, and the smaller items.

Items 1-3 run the real CLI in subprocesses on the shipped toy model (a few training steps each); the others call the
CLI's ``main`` in-process or the functions behind it, on the same toy subject.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from _cli import REPO_ROOT, forbid_model_loads, run_cli, signal_when
from safetensors.torch import load_file

TOY = "builtin:toy-base"
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    return result


def _error_line(result: subprocess.CompletedProcess) -> str:
    """The run ended with exit 2 and one ``error:`` line, no traceback; returns that line."""
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    return last


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder holding the demo's photos of the toy subject (``photos/``), as a user's working folder."""
    from subjectgen_training.toy.subject_photos import write_spec_photos

    folder = tmp_path_factory.mktemp("first-hour-2")
    write_spec_photos("shipped", folder / "photos")
    return folder


@pytest.fixture(scope="module")
def toy_subject(work):
    """``subjectgen train --base builtin:toy-base --photos photos --out S --steps 3``: no --method, no recipe flag."""
    result = _ok(run_cli("train", "--base", TOY, "--photos", "photos", "--out", "S", "--steps", "3", "--threads", "1",
                         cwd=work, env=ONE_THREAD))
    return work / "S", result


# -- item 1: builtin:<name> everywhere, `subjectgen models`, the subject records the name ----------------------------

def test_models_lists_the_builtin_names(capsys):
    from subjectgen_training.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("builtin:toy-base", "builtin:toy-alt-lora", "builtin:tiny-sd", "builtin:tiny-clip"):
        assert name in out


@pytest.mark.slow
def test_a_subject_trained_on_a_builtin_base_records_its_name(toy_subject):
    subject, _ = toy_subject
    assert json.loads((subject / "subject_config.json").read_text())["base_model"] == TOY
    assert json.loads((subject / "train_config.json").read_text())["base"] == TOY


def _second_person(subject: Path, folder: Path) -> Path:
    """A copy of ``subject`` with other token vectors and deltas (a second person trained with the same token)."""
    import torch
    from safetensors.torch import save_file

    shutil.copytree(subject, folder)
    tensors = load_file(str(folder / "subject.safetensors"))
    generator = torch.Generator().manual_seed(1)
    save_file({key: value + 0.5 * value.std() * torch.randn(value.shape, generator=generator)
               for key, value in tensors.items()}, str(folder / "subject.safetensors"))
    return folder


@pytest.mark.slow
def test_generate_export_merge_find_the_builtin_base_the_subject_records(toy_subject, work):
    subject, _ = toy_subject
    _ok(run_cli("generate", "--subject", "S", "--prompts", "a {} cartoon face", "--num-per-prompt", "1", "--steps", "2",
                "--out", "images", "--threads", "1", cwd=work, env=ONE_THREAD))
    assert len(list((work / "images").glob("*.png"))) == 1
    _ok(run_cli("export", "S", "--format", "diffusers", "--out", "exported", "--threads", "1", cwd=work, env=ONE_THREAD))
    assert (work / "exported" / "pytorch_custom_diffusion_weights.safetensors").is_file()
    # item 7: two people trained with the same default token merge once each person's token is named
    _second_person(subject, work / "S2")
    merged = _ok(run_cli("merge", "S", "S2", "--tokens", "<alice>", "<bob>", "--out", "merged", "--threads", "1",
                         cwd=work, env=ONE_THREAD))
    config = json.loads((work / "merged" / "subject_config.json").read_text())
    assert config["token"] == "<alice>" and list(config["extra_tokens"]) == ["<bob>"], merged.stdout


@pytest.mark.slow
def test_regularize_and_evaluate_take_builtin_model_names(toy_subject, work, monkeypatch):
    """The model arguments that are not a subject's base, through the CLI's main in this process."""
    from subjectgen_training.cli import main

    monkeypatch.chdir(work)
    monkeypatch.setenv("SUBJECTGEN_CACHE", str(work / "cache"))
    assert main(["regularize", "--model", TOY, "--prompt", "a cartoon face", "--num", "1", "--steps", "2",
                 "--out", "reg", "--threads", "1"]) == 0
    assert len(list((work / "reg").glob("*.png"))) == 1
    assert main(["evaluate", "--images", "reg", "--reference", "photos", "--face-model", "none",
                 "--clip-model", "builtin:tiny-clip", "--out", "results.json", "--threads", "1"]) == 0
    assert json.loads((work / "results.json").read_text())["summary"]["overall"]["clip_text"] is not None


def test_an_unknown_builtin_name_is_one_error_line_that_lists_the_known_ones(tmp_path, capsys):
    from subjectgen_training.cli import main

    assert main(["generate", "--base", "builtin:toy-bse", "--prompts", "x", "--out", str(tmp_path / "i"),
                 "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: unknown built-in model 'builtin:toy-bse'")
    assert "builtin:toy-base" in err and "subjectgen models" in err


def test_the_ui_takes_a_builtin_base():
    from subjectgen_training.toy.models import WEIGHTS
    from subjectgen_training.ui.workdir import is_toy, resolve_base

    assert Path(resolve_base(TOY)) == WEIGHTS / "toy-base" and is_toy(TOY) and is_toy("toy-base")


def test_the_bare_shipped_name_older_subjects_record_is_the_builtin_unless_a_folder_has_it(tmp_path, monkeypatch):
    from subjectgen_training.models.builtin_models import resolve_model

    monkeypatch.chdir(tmp_path)
    assert resolve_model("toy-base") == resolve_model(TOY)  # not a Hub id to wait for
    (tmp_path / "toy-base").mkdir()
    assert resolve_model("toy-base") == "toy-base"  # the user's own folder of that name wins


# -- item 2: the toy recipe on a built-in toy base, --method defaults to cd+cr -----------------------------------------

@pytest.mark.slow
def test_train_on_the_toy_base_defaults_to_the_printed_toy_recipe_and_cd_cr(toy_subject):
    subject, result = toy_subject
    recorded = json.loads((subject / "train_config.json").read_text())
    assert recorded["method"] == "cd+cr"
    # the toy world's cd+cr recipe (training/configs/five_setups_toy.yaml), not SD 1.5's 1e-5 scaled rates
    expected = {"lr": 2e-3, "token_lr": 4e-2, "scale_lr": False, "batch_size": 4, "resolution": 32,
                "prior_loss_weight": 8.0, "max_grad_norm": 8.0, "prompt": "a {} cartoon face", "steps": 3}
    assert {key: recorded[key] for key in expected} == expected
    assert "toy world's cd+cr recipe" in result.stdout and "lr 0.002" in result.stdout


def test_a_flag_overrides_the_toy_recipe_and_a_real_base_keeps_the_method_recipe(tmp_path):
    import argparse

    from subjectgen_training.commands.train import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--base", TOY, "--photos", "p", "--out", "o", "--lr", "0.01", "--method", "cd"])
    config = config_from_args(args)
    assert (config.lr, config.steps, config.scale_lr, config.method) == (0.01, 150, False, "cd")
    args = parser.parse_args(["--base", str(tmp_path), "--photos", "p", "--out", "o"])
    config = config_from_args(args)
    assert (config.method, config.lr, config.scale_lr) == ("cd+cr", None, True)  # SD 1.5's recipe fills it later


# -- item 3: Ctrl-C says --resume, the same command refuses to start over, --resume continues ------------------------

@pytest.mark.slow
@pytest.mark.long
def test_an_interrupted_run_says_resume_and_never_starts_over_silently(work, monkeypatch, capsys):
    out = work / "stopped"
    command = ["train", "--base", TOY, "--photos", str(work / "photos"), "--out", str(out), "--steps", "4",
               "--checkpoint-every", "1", "--threads", "1"]
    checkpoints = work / "stopped.checkpoints"
    stopped = signal_when(command, lambda: any(checkpoints.glob("step-*/state.json")), sig=signal.SIGINT,
                          probes={"pause_when": {"dir": str(checkpoints), "name_startswith": "step-", "count": 1}},
                          env=ONE_THREAD)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    last = stopped.stderr.strip().splitlines()[-1]
    assert "--resume" in last and "run the same command again to resume" not in last, last
    # the same command again: refused before any model loads, the checkpoint kept
    from subjectgen_training.cli import main

    forbid_model_loads(monkeypatch.setattr)
    assert main(command) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "--resume" in line and "--restart" in line and "step 1" in line
    assert (checkpoints / "step-0000001" / "state.json").is_file()
    monkeypatch.undo()
    resumed = _ok(run_cli(*command, "--resume", env=ONE_THREAD))
    assert json.loads((out / "train_summary.json").read_text())["resumed_from"] == 1, resumed.stderr[-2000:]


def test_restart_deletes_a_stopped_runs_checkpoints_and_resume_with_restart_is_refused(tmp_path):
    from subjectgen_diffusers.errors import SubjectgenError
    from subjectgen_training.trainer.checkpoints import check_stopped_run
    from subjectgen_training.trainer.config import TrainConfig, TrainConfigError

    step = tmp_path / "S.checkpoints" / "step-0000005"
    step.mkdir(parents=True)
    (step / "state.json").write_text('{"step": 5}')
    with pytest.raises(SubjectgenError, match="--resume .* --restart"):
        check_stopped_run(tmp_path / "S", resume=False, restart=False)
    check_stopped_run(tmp_path / "S", resume=True, restart=False)
    assert step.is_dir()
    check_stopped_run(tmp_path / "S", resume=False, restart=True)
    assert not step.exists()
    with pytest.raises(TrainConfigError, match="give one of them"):
        TrainConfig.from_dict({"base": TOY, "photos": "p", "out": "o", "resume": True, "restart": True})


# -- item 4: train_config.json is a valid --config and reproduces the subject exactly --------------------------------

@pytest.mark.slow
def test_the_recorded_config_reproduces_the_subject_exactly(toy_subject, work, monkeypatch):
    from subjectgen_training.cli import main

    subject, _ = toy_subject
    monkeypatch.chdir(work)
    assert main(["train", "--config", "S/train_config.json", "--out", "again", "--threads", "1"]) == 0
    first, second = load_file(str(subject / "subject.safetensors")), load_file(str(work / "again" / "subject.safetensors"))
    assert first.keys() == second.keys()
    assert all(bool((first[key] == second[key]).all()) for key in first)


def test_a_recorded_config_whose_derived_rates_disagree_is_refused(toy_subject, tmp_path):
    from subjectgen_training.trainer.config import TrainConfig, TrainConfigError

    subject, _ = toy_subject
    recorded = json.loads((subject / "train_config.json").read_text())
    assert TrainConfig.from_dict(recorded).lr == recorded["lr"]  # accepted as written
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps({**recorded, "lr": 0.5}))
    with pytest.raises(TrainConfigError, match="effective_lr 0.002 does not follow"):
        TrainConfig.from_file(edited)
    # a flag may change a rate: the file's own figures were consistent
    assert TrainConfig.from_file(subject / "train_config.json", lr=0.5).lr == 0.5


# -- item 5: one error line before any model loads, exit 2 ------------------------------------------------------------

def _main(monkeypatch, *args: str) -> int:
    from subjectgen_training.cli import main

    forbid_model_loads(monkeypatch.setattr)
    return main([*args, "--threads", "1"])


@pytest.mark.parametrize("command", [
    ["generate", "--base", TOY, "--prompts", "a {}", "--out", "{file}"],
    ["prepare", "{photos}", "{file}"],
    ["demo", "--out", "{file}"],
    ["export", "{subject}", "--format", "diffusers", "--out", "{file}"],
    ["export", "{subject}", "--format", "a1111", "--token-only", "--out", "{file}"],
], ids=["generate", "prepare", "demo", "export-diffusers", "export-a1111"])
def test_out_naming_an_existing_file_is_one_error_line(command, toy_subject, work, tmp_path, monkeypatch, capsys):
    existing = tmp_path / "existing"
    existing.write_text("mine")
    places = {"{file}": existing, "{photos}": work / "photos", "{subject}": toy_subject[0]}
    args = [str(places.get(part, part)) for part in command]
    assert _main(monkeypatch, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "existing file" in err[-1] and existing.read_text() == "mine"


@pytest.mark.parametrize("command", [["compress", "{subject}", "--rank", "2", "--out", "{out}"],
                                     ["merge", "{subject}", "{subject}", "--tokens", "<a>", "<b>", "--out", "{out}"]],
                         ids=["compress", "merge"])
def test_a_truncated_subject_is_one_error_line(command, toy_subject, tmp_path, monkeypatch, capsys):
    subject = tmp_path / "S"
    shutil.copytree(toy_subject[0], subject)
    weights = subject / "subject.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    args = [str({"{subject}": subject, "{out}": tmp_path / "out"}.get(part, part)) for part in command]
    assert _main(monkeypatch, *args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: {weights} is damaged or incomplete"), last


# -- item 6: export never overwrites ------------------------------------------------------------------------------

def test_export_refuses_an_existing_a1111_file_and_a_diffusers_folder(toy_subject, tmp_path, monkeypatch, capsys):
    subject = str(toy_subject[0])
    existing = tmp_path / "mine.safetensors"
    existing.write_bytes(b"keep")
    assert _main(monkeypatch, "export", subject, "--format", "a1111", "--token-only", "--out", str(existing)) == 2
    assert existing.read_bytes() == b"keep" and "already exists" in capsys.readouterr().err
    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "learned_embeds.safetensors").write_bytes(b"keep")
    assert _main(monkeypatch, "export", subject, "--format", "diffusers", "--out", str(folder)) == 2
    assert (folder / "learned_embeds.safetensors").read_bytes() == b"keep" and "already exists" in capsys.readouterr().err


# -- item 7: a token with non-ASCII letters keeps them in file names and the prompt word ----------------------------

def test_a_non_ascii_token_keeps_its_letters_in_exported_names(toy_subject, tmp_path, monkeypatch):
    subject = tmp_path / "S"
    shutil.copytree(toy_subject[0], subject)
    config = json.loads((subject / "subject_config.json").read_text())
    (subject / "subject_config.json").write_text(json.dumps({**config, "token": "‹ünï>"}, ensure_ascii=False))
    assert _main(monkeypatch, "export", str(subject), "--format", "lora", "--out", str(tmp_path / "lora")) == 0
    assert {"ünï_lora.safetensors", "ünï.safetensors"} <= {p.name for p in (tmp_path / "lora").iterdir()}
    assert _main(monkeypatch, "export", str(subject), "--format", "a1111", "--token-only",
                 "--out", str(tmp_path / "a1111")) == 0
    assert [p.name for p in (tmp_path / "a1111").iterdir()] == ["ünï.safetensors"]


# -- item 8: the smaller items ----------------------------------------------------------------------------------------

def test_a_photo_folder_of_text_files_says_it_has_no_images(tmp_path):
    from subjectgen_training.data.photos import PhotoError, load_photo_folder

    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text("caption")
    with pytest.raises(PhotoError, match=r"has no images: 2 files that are not images \(a.txt, b.txt\)"):
        load_photo_folder(tmp_path)


def test_generate_help_shows_its_defaults():
    from subjectgen_training.cli import build_parser

    parser = build_parser("generate")
    sub = next(a for a in parser._actions if a.dest == "command").choices["generate"]
    helps = {action.dest: action.help % vars(action) for action in sub._actions if action.help}
    for dest, default in (("num_per_prompt", "4"), ("steps", "50"), ("guidance", "7.5"), ("scale", "1.0")):
        assert f"default: {default}" in helps[dest], helps[dest]


def test_ci_run_keeps_the_users_venv_and_runs_the_readme_test_command(tmp_path):
    """``.ci/run`` in a copy of a checkout with a ``.venv`` of the user's: the README's test command runs (python3 and
    the venv's tools are shims that log their calls) in a folder of its own, and the user's ``.venv`` stays."""
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(REPO_ROOT / ".ci" / "run", repo / ".ci" / "run")
    (repo / "README.md").write_text("readme")
    (repo / ".venv").mkdir()
    (repo / ".venv" / "mine").write_text("the user's venv")
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    tool = f'#!/bin/sh\necho "$(pwd) $(basename "$0") $*" >> {log}\n'
    venv_maker = tool + 'mkdir -p "$3/bin"\nfor t in pip python; do printf \'%s\' \'' + tool.replace("'", "'\\''") + \
        '\' > "$3/bin/$t"; chmod +x "$3/bin/$t"; done\n'
    (bin_dir / "python3").write_text(venv_maker)
    (bin_dir / "chromium").write_text("#!/bin/sh\n")  # present: the script installs nothing
    for shim in ("python3", "chromium"):
        (bin_dir / shim).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(tmp_path)}
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    done = subprocess.run(["bash", ".ci/run"], cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (repo / ".venv" / "mine").read_text() == "the user's venv"
    calls = log.read_text().splitlines()
    assert [call.split(" ", 1)[1] for call in calls] == [
        "python3 -m venv .venv", 'pip install -q torch==2.13.0 -e .[dev]', "python -m pytest -n 2"]
    assert all(not call.startswith(f"{repo} ") for call in calls)  # not in the user's checkout
    readme = (REPO_ROOT / "README.md").read_text()
    command = next(line for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line)
    assert command in readme  # the README's test command, exactly


# -- Done when: the README's commands that use the toy model run as written --------------------------------------------

# README shell lines on the toy model that this test does not run, and why (each must still be in the README).
README_SKIPPED = {
    "python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 -e \".[demo]\" && .venv/bin/subjectgen demo --out demo_out":
        "builds a venv and trains 150 steps (~60 s CPU): tests/test_demo.py runs the demo, tests/test_wheel.py from a "
        "fresh venv; its photos are written here as the demo writes them",
    "subjectgen ui": "a web server: tests/test_ui.py drives it in a browser",
    # The two experiment lines run the whole toy comparison (five trainings, 160 images, ~5 CPU-minutes): the suite
    # runs the same runner on the same settings (test_toy_experiment.py checks five_setups_toy's settings equal the
    # population config's and runs that on two held-out faces), its Ray executor (test_scale_out.py, killed and rerun),
    # and test_readme_experiment_lines_name_a_shipped_config_and_real_flags below parses these lines as written.
    "subjectgen experiment five_setups_toy --out runs/toy": "the toy comparison: see above",
    "subjectgen experiment five_setups_toy --out runs/toy --executor ray": "the toy comparison on Ray: see above",
}
STEPS_OF_A_README_TRAIN = ["--steps", "2"]  # the line as written, 2 steps instead of the recipe's 150 (measured by hand)


def readme_shell_lines(text: str) -> list[str]:
    """Every command line of the README's ```bash blocks and indented code blocks (continuations joined)."""
    lines, fenced, pending = [], None, ""
    for raw in text.splitlines():
        if raw.startswith("```"):
            fenced = raw[3:].strip() if fenced is None else None
            continue
        if fenced == "bash" or (fenced is None and raw.startswith("    ") and raw.strip().startswith("subjectgen ")):
            line = (pending + " " + raw.strip()) if pending else raw.strip()
            if line.endswith("\\"):
                pending = line[:-1].strip()
                continue
            pending = ""
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def uses_the_toy_model(line: str) -> bool:
    words = line.split("#")[0]
    return ("toy" in words or "builtin:" in words
            or (re.search(r"subjectgen (demo|ui)\b", words) is not None and "--base" not in words))


@pytest.mark.slow
def test_the_readmes_toy_model_lines_run_as_written(tmp_path):
    import shlex
    import sys

    from subjectgen_training.toy.subject_photos import write_spec_photos

    toy_lines = [line for line in readme_shell_lines((REPO_ROOT / "README.md").read_text(encoding="utf-8"))
                 if uses_the_toy_model(line)]
    stripped = [shlex.split(line, comments=True) for line in toy_lines]
    skipped = [line for line, words in zip(toy_lines, stripped) if " ".join(words) in
               {" ".join(shlex.split(s, comments=True)) for s in README_SKIPPED}]
    assert len(skipped) == len(README_SKIPPED), skipped  # the skip list names README lines that exist
    to_run = [words for line, words in zip(toy_lines, stripped) if line not in skipped]
    assert any(words[1:2] == ["train"] for words in to_run), toy_lines
    write_spec_photos("shipped", tmp_path / "demo_out" / "subjects" / "shipped" / "photos" / "original")
    for words in to_run:
        assert Path(words[0]).name == "subjectgen", words  # every such line runs the CLI
        args = words[1:] + (STEPS_OF_A_README_TRAIN if words[1] == "train" else [])
        result = run_cli(*args, "--threads", "1", cwd=tmp_path, env=ONE_THREAD)
        assert result.returncode == 0, (words, result.stderr[-3000:])
    assert json.loads((tmp_path / "toy_subject" / "subject_config.json").read_text())["base_model"] == TOY


def test_readme_experiment_lines_name_a_shipped_config_and_real_flags():
    """The README's experiment lines (not run above: see README_SKIPPED) name a config that resolves and flags the
    command's own parser accepts, with the values the README says."""
    import shlex

    from subjectgen_training.cli import build_parser
    from subjectgen_training.experiment import load_experiment_config

    lines = [shlex.split(line, comments=True) for line in readme_shell_lines((REPO_ROOT / "README.md").read_text("utf-8"))
             if line.startswith("subjectgen experiment five_setups_toy")]
    assert len(lines) == 2, lines
    parser = build_parser("experiment")
    for words in lines:
        args = parser.parse_args(words[1:])
        assert load_experiment_config(args.config).name == "five_setups_toy"
        assert args.out == "runs/toy" and (args.executor or "local") == ("ray" if "ray" in words else "local")
