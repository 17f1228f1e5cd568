"""A new user's first hour, phase 2 (issue 15): what a subject folder records and publishes, where checkpoints go,
two runs into one folder, the base model's native size, help for every flag, and late/vague loading errors.

Every test uses real files, the real trainer on a tiny in-process SD model, or the real CLI in a subprocess.
"""

from __future__ import annotations

import json
import re
import os
import stat
from pathlib import Path

import pytest

from _cli import REPO_ROOT, run_cli

TOY_BASE = REPO_ROOT / "training" / "toy" / "weights" / "toy-base"


@pytest.fixture(scope="module")
def alice_photo_dir(tmp_path_factory, astronaut_image):
    folder = tmp_path_factory.mktemp("photos") / "alice-photos"
    folder.mkdir()
    for i, box in enumerate([(0, 0, 400, 400), (60, 0, 460, 400), (0, 40, 420, 460), (30, 30, 430, 430)]):
        astronaut_image.crop(box).save(folder / f"photo{i}.jpg")
    return folder


def _train(tiny_sd_dir, alice_photo_dir, out: Path, **extra):
    from subjectgen_training.trainer.config import TrainConfig
    from subjectgen_training.trainer.loop import train

    config = {**dict(base=str(tiny_sd_dir), photos=str(alice_photo_dir), method="cd+cr", out=str(out), resolution=64,
                     batch_size=1, steps=2, checkpoint_every=1), **extra}
    return train(TrainConfig.from_dict(config))


# -- item 4: no private paths, checkpoints beside the subject, push uploads the subject only ------------------------

@pytest.mark.slow
def test_a_trained_subject_records_names_not_local_paths(tiny_sd_dir, alice_photo_dir, tmp_path):
    from subjectgen_diffusers.public_names import local_paths_in

    out = _train(tiny_sd_dir, alice_photo_dir, tmp_path / "subjects" / "alice")
    subject_config = json.loads((out / "subject_config.json").read_text())
    train_config = json.loads((out / "train_config.json").read_text())
    assert subject_config["base_model"] == tiny_sd_dir.name == "model"
    assert (train_config["base"], train_config["photos"], train_config["out"]) == ("model", "alice-photos", "alice")
    for name in ("subject_config.json", "train_config.json"):
        text = (out / name).read_text()
        assert str(tmp_path) not in text and str(tiny_sd_dir.parent) not in text, name
        assert local_paths_in(json.loads(text)) == [], name


@pytest.mark.slow
def test_checkpoints_live_beside_the_subject_and_go_on_success(tiny_sd_dir, alice_photo_dir, tmp_path):
    from subjectgen_training.trainer.checkpoints import checkpoint_dir

    dropped = _train(tiny_sd_dir, alice_photo_dir, tmp_path / "dropped")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dropped"]  # no dropped.checkpoints left
    assert sorted(p.name for p in dropped.iterdir()) == [
        "subject.safetensors", "subject_config.json", "train_config.json", "train_summary.json"]

    previous = os.umask(0o027)
    try:
        kept = _train(tiny_sd_dir, alice_photo_dir, tmp_path / "kept", keep_checkpoints=True, steps=3)
    finally:
        os.umask(previous)
    assert checkpoint_dir(kept) == tmp_path / "kept.checkpoints"
    assert not (kept / "checkpoints").exists()
    steps = sorted(p.name for p in checkpoint_dir(kept).iterdir())
    assert steps == ["step-0000001", "step-0000002"]  # the last K=2 (the default limit) of steps 1 and 2
    assert oct(stat.S_IMODE((checkpoint_dir(kept) / steps[-1]).stat().st_mode)) == oct(0o750)  # the umask's mode


def _uploaded(folder: Path, allow_patterns) -> list[str]:
    """What huggingface_hub's upload_folder sends: the folder's files filtered by its own pattern matcher."""
    from huggingface_hub.utils import filter_repo_objects

    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    return sorted(filter_repo_objects(files, allow_patterns=allow_patterns))


def test_push_uploads_only_the_subjects_own_files(tmp_path, tiny_pipe):
    from subjectgen_diffusers.hub import push_subject_to_hub
    from _plugin_fixtures import autospec_api, make_subject

    folder = tmp_path / "alice"
    make_subject(tiny_pipe, "<alice>").save(folder)
    (folder / "train_config.json").write_text(json.dumps({"base": "model", "photos": "alice-photos"}))
    for extra in ("checkpoints/step-0000002/optimizer.pt", "checkpoints/step-0000002/trainable.safetensors",
                  "validation/step-0000002.png", "logs/events.out", "private-notes.txt", "selfie.jpg"):
        (folder / extra).parent.mkdir(parents=True, exist_ok=True)
        (folder / extra).write_bytes(b"x")
    api = autospec_api()
    push_subject_to_hub(folder, "someone/alice", api=api)
    assert [call[0] for call in api.mock_calls] == ["create_repo", "upload_folder"]  # the real API's names
    upload = api.upload_folder.call_args.kwargs
    assert _uploaded(folder, upload["allow_patterns"]) == [
        "README.md", "subject.safetensors", "subject_config.json", "train_config.json"]


@pytest.mark.parametrize("file_name, key", [("subject_config.json", "base_model"), ("train_config.json", "photos")])
def test_push_refuses_a_subject_that_holds_a_local_path(tmp_path, tiny_pipe, file_name, key):
    from subjectgen_diffusers.errors import SubjectgenError
    from subjectgen_diffusers.hub import push_subject_to_hub
    from _plugin_fixtures import autospec_api, make_subject

    folder = tmp_path / "alice"
    make_subject(tiny_pipe, "<alice>").save(folder)
    (folder / "train_config.json").write_text(json.dumps({"base": "model", "photos": "alice-photos"}))
    data = json.loads((folder / file_name).read_text())
    data[key] = "/home/alice/private/sd15"
    (folder / file_name).write_text(json.dumps(data))
    api = autospec_api()
    with pytest.raises(SubjectgenError, match=rf"{file_name} holds local paths that push would publish: "
                                              rf"{key} = '/home/alice/private/sd15'"):
        push_subject_to_hub(folder, "someone/alice", api=api)
    assert api.mock_calls == [] and not (folder / "README.md").exists()


def test_public_names(tmp_path, monkeypatch):
    from subjectgen_diffusers.public_names import public_name

    (tmp_path / "photos" / "alice").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)

    assert public_name("runwayml/stable-diffusion-v1-5") == "runwayml/stable-diffusion-v1-5"
    assert public_name("/home/alice/models/sd15/") == "sd15"
    assert public_name("C:\\Users\\alice\\sd15") == "sd15"
    assert public_name("photos/alice") == "alice"  # exists here: a local folder, not a Hub id
    assert public_name("photos/bob") == "photos/bob"  # no such folder: a Hub id, as diffusers would read it
    assert public_name("~/photos") == "photos"
    assert public_name(str(TOY_BASE)) == "toy-base"


# -- item 10: --out naming a file, two runs into one folder ------------------------------------------------------------

def _toy_train_args(alice_photo_dir, out: Path, *more: str) -> list[str]:
    return ["train", "--base", str(TOY_BASE), "--photos", str(alice_photo_dir), "--method", "cd", "--out", str(out),
            "--resolution", "32", "--batch-size", "1", "--threads", "1", *more]


def test_train_out_naming_an_existing_file_is_refused(alice_photo_dir, tmp_path):
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    result = run_cli(*_toy_train_args(alice_photo_dir, taken, "--steps", "1"), timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: --out {taken} is an existing file, not a folder")
    assert taken.read_text() == "mine"


def _wait_for(predicate, what: str, process, seconds: float = 300.0):
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert process.poll() is None, f"the first run ended early ({process.returncode}) while waiting for {what}"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _lock_record(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # not there yet, or created but not yet written


@pytest.mark.slow
def test_a_second_run_into_the_same_folder_refuses_and_a_killed_runs_lock_does_not_stick(alice_photo_dir, tmp_path):
    import socket
    import subprocess
    import sys

    from subjectgen_training.trainer.checkpoints import list_checkpoints

    out = tmp_path / "alice"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "subjectgen_training",
                              *_toy_train_args(alice_photo_dir, out, "--steps", "100000", "--checkpoint-every", "1")],
                             cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        record = _wait_for(lambda: _lock_record(out / "train.lock"), "the first run's lock", first)
        assert record["pid"] == first.pid and record["host"] == socket.gethostname()
        second = run_cli(*_toy_train_args(alice_photo_dir, out, "--steps", "2"), timeout=300)
        assert second.returncode == 2, second.stderr[-2000:]
        assert (f"is being written by another training run: process {first.pid} on host {socket.gethostname()}"
                in second.stderr.strip().splitlines()[-1])
        _wait_for(lambda: list_checkpoints(out), "a checkpoint of the first run", first)
    finally:
        first.kill()
        first.wait()
    assert _lock_record(out / "train.lock")["pid"] == first.pid  # the dead run's file is still there
    reached = int(list_checkpoints(out)[-1].name.split("-")[1])
    resumed = run_cli(*_toy_train_args(alice_photo_dir, out, "--steps", str(reached + 1), "--resume"), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "train_summary.json").read_text())["resumed_from"] == reached
    assert not (out / "train.lock").exists()


# -- item 7: one resolution rule in train, the base's native size, fewer than 4 photos ---------------------------------

RULE = "--resolution must be a positive multiple of 8 (the image side in pixels, e.g. 512), got {}."


def test_train_shares_the_resolution_rule(alice_photo_dir, tmp_path):
    from subjectgen_training.trainer.config import TrainConfig, TrainConfigError

    for bad in (0, -8, 12):
        with pytest.raises(TrainConfigError, match=RULE.format(bad).replace("(", r"\(").replace(")", r"\)")):
            TrainConfig.from_dict(dict(base="b", photos="p", method="cd", out="o", resolution=bad))
    result = run_cli(*_toy_train_args(alice_photo_dir, tmp_path / "o", "--steps", "1", "--resolution", "0"), timeout=300)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == "error: " + RULE.format(0)
    assert not (tmp_path / "o").exists()


def test_train_defaults_to_the_base_models_native_size(tiny_sd_dir):
    from diffusers import StableDiffusionPipeline

    from subjectgen_training.trainer.config import TrainConfig

    for base in (TOY_BASE, tiny_sd_dir):
        pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, feature_extractor=None,
                                                       requires_safety_checker=False)
        native = pipe.unet.config.sample_size * pipe.vae_scale_factor  # what diffusers itself samples at
        config = TrainConfig.from_dict(dict(base=str(base), photos="p", method="cr", out="o")).resolved().sized()
        assert config.resolution == native, base
    assert native == 64 and TrainConfig.from_dict(dict(base=str(TOY_BASE), photos="p", method="cr",
                                                       out="o")).sized().resolution == 32


def test_fewer_than_four_photos_warn(tiny_sd_dir, alice_photo_dir, tmp_path, caplog):
    import logging
    import shutil

    from subjectgen_training.methods import build_method
    from subjectgen_training.trainer.config import TrainConfig
    from subjectgen_training.trainer.loop import check_inputs

    def warnings_for(folder: Path) -> list[str]:
        config = TrainConfig.from_dict(dict(base=str(tiny_sd_dir), photos=str(folder), method="cd",
                                            out="o")).resolved().sized()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="subjectgen_training.trainer.loop"):
            check_inputs(config, build_method(config))
        return [r.getMessage() for r in caplog.records if "usable photo" in r.getMessage()]

    few = tmp_path / "few"
    few.mkdir()
    for photo in sorted(alice_photo_dir.iterdir())[:3]:
        shutil.copy(photo, few / photo.name)
    assert warnings_for(few) == ["--photos: only 3 usable photo(s) in few; the methods are made for 4-20 photos of "
                                 "the person (varied poses and backgrounds): with fewer, the subject tends to copy "
                                 "them"]
    assert warnings_for(alice_photo_dir) == []  # 4 photos: the low end of the range, no warning


# -- item 8: the --resume line only when --resume was asked for -------------------------------------------------------

def _train_command(*args: str) -> int:
    from subjectgen_training.cli import build_parser
    from subjectgen_training.commands import train as train_command

    return train_command.run(build_parser("train").parse_args(["train", *args]))


@pytest.mark.slow
def test_the_resume_line_only_when_resume_was_asked(alice_photo_dir, tmp_path, caplog):
    import logging

    from subjectgen_training.trainer.config import TrainConfig
    from subjectgen_training.trainer.loop import train

    common = dict(base=str(TOY_BASE), photos=str(alice_photo_dir), method="cd", resolution=32, batch_size=1, steps=1)
    with caplog.at_level(logging.INFO):
        train(TrainConfig.from_dict({**common, "out": str(tmp_path / "runner"), "resume": True}))  # a resumable job
    assert not [r for r in caplog.records if "--resume" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert _train_command(*_toy_train_args(alice_photo_dir, tmp_path / "asked", "--steps", "1", "--resume")[1:]) == 0
    said = [r.getMessage() for r in caplog.records if "--resume" in r.getMessage()]
    assert said == [f"--resume: no checkpoint in {tmp_path / 'asked.checkpoints'}; starting from step 0"]


# -- item 9: every flag says what it does, train's flags their defaults ------------------------------------------------

def test_every_flag_of_every_command_has_help_and_train_shows_its_defaults():
    import argparse

    from subjectgen_training.cli import COMMANDS, build_parser

    for command in COMMANDS:
        parser = build_parser(command)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
        formatter = sub._get_formatter()
        for action in sub._actions:
            name = "/".join(action.option_strings) or action.dest
            assert action.help and action.help is not argparse.SUPPRESS, f"{command} {name} has no help"
            if command == "train" and action.option_strings and action.dest not in ("help", "threads"):
                text = formatter._expand_help(action)
                assert "(default: " in text or "(method default: " in text or "(required" in text, (name, text)
    help_text = " ".join(run_cli("train", "--help", timeout=120).stdout.split())
    assert "--steps STEPS optimizer steps (method default: cd 1000, cr 320, cd+cr 1000)" in help_text
    assert "(default: the base model's native size" in help_text


# -- items 2 and 3: a damaged subject, a subject of another base: said before any model loads -------------------------

@pytest.fixture
def saved_subject(tmp_path, tiny_pipe):
    """A Custom Diffusion + token subject shaped for the tiny SD test model (not for the shipped toy base)."""
    from _plugin_fixtures import autospec_api, make_subject

    folder = tmp_path / "alice"
    make_subject(tiny_pipe, "<alice>", scope="kv+q+out").save(folder)
    config = json.loads((folder / "subject_config.json").read_text())
    (folder / "subject_config.json").write_text(json.dumps({**config, "base_model": "tiny-sd"}))
    return folder


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_subject_is_named_before_any_model_loads(saved_subject, tmp_path, monkeypatch):
    from subjectgen_diffusers import SubjectPipeline
    from subjectgen_diffusers.subject_check import SubjectCheckError
    from subjectgen_training.sampling.generate import GenerateConfig, load_pipeline

    weights = saved_subject / "subject.safetensors"
    _truncate(weights)
    result = run_cli("generate", "--base", str(TOY_BASE), "--subject", str(saved_subject), "--prompts",
                     "a photo of {}", "--out", str(tmp_path / "images"), "--threads", "1", timeout=300,
                     probes={"forbid_model_loads": True})  # any from_pretrained would end it with a traceback
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {weights} is damaged or incomplete (")
    assert last.endswith("Copy or download the subject again (or retrain it); nothing was loaded.")

    def loaded(*args, **kwargs):
        raise AssertionError("the base model was loaded before the subject was checked")

    monkeypatch.setattr(SubjectPipeline, "from_pretrained", loaded)
    with pytest.raises(SubjectCheckError, match="is damaged or incomplete"):
        load_pipeline(GenerateConfig(base=str(TOY_BASE), subject=str(saved_subject), prompts="p", out="o"))


def test_load_subject_names_a_truncated_file(saved_subject, tiny_pipe):
    from subjectgen_diffusers import load_subject
    from subjectgen_diffusers.subject_check import SubjectCheckError

    _truncate(saved_subject / "subject.safetensors")
    with pytest.raises(SubjectCheckError, match=re.escape(f"{saved_subject / 'subject.safetensors'} is damaged or "
                                                          "incomplete")):
        load_subject(tiny_pipe, saved_subject)
    assert "<alice>" not in tiny_pipe.tokenizer.get_vocab()  # nothing half-loaded


def test_export_and_push_refuse_a_truncated_subject(saved_subject, tmp_path):
    from _plugin_fixtures import autospec_api

    from subjectgen_diffusers.hub import push_subject_to_hub
    from subjectgen_diffusers.subject_check import SubjectCheckError

    _truncate(saved_subject / "subject.safetensors")
    result = run_cli("export", str(saved_subject), "--format", "a1111", "--out", str(tmp_path / "a.safetensors"),
                     "--token-only", timeout=300, probes={"forbid_model_loads": True})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "subject.safetensors is damaged or incomplete" in result.stderr.strip().splitlines()[-1]
    api = autospec_api()
    with pytest.raises(SubjectCheckError, match="subject.safetensors is damaged or incomplete"):
        push_subject_to_hub(saved_subject, "someone/alice", api=api)
    assert api.mock_calls == []


def test_files_that_disagree_with_their_config_are_refused(saved_subject):
    import torch
    from safetensors.torch import load_file, save_file

    from subjectgen_diffusers.subject_check import SubjectCheckError, check_subject_files

    weights = saved_subject / "subject.safetensors"
    tensors = load_file(str(weights))
    dropped = sorted(k for k in tensors if k.endswith(".to_q.delta"))[0]
    save_file({k: v for k, v in tensors.items() if k != dropped}, str(weights))
    with pytest.raises(SubjectCheckError, match=rf"does not hold the tensors subject_config.json promises "
                                                rf"\(missing \['{re.escape(dropped)}'\]\)"):
        check_subject_files(saved_subject)
    save_file({**tensors, "token_embeddings": torch.zeros(3, 32)}, str(weights))
    with pytest.raises(SubjectCheckError, match=r"`token_embeddings` has shape \(3, 32\), subject_config.json "
                                                r"promises \(2, 32\)"):
        check_subject_files(saved_subject)


def test_a_subject_of_another_base_is_named_before_the_model_loads(saved_subject, tmp_path, tiny_sd_dir,
                                                                   monkeypatch):
    from subjectgen_diffusers import SubjectPipeline
    from subjectgen_diffusers.subject_check import SubjectCheckError, check_subject
    from subjectgen_diffusers.subject_format import Subject, SubjectConfig
    from subjectgen_training.sampling.generate import GenerateConfig, load_pipeline

    check_subject(saved_subject, tiny_sd_dir)  # the base it was made for: fine
    result = run_cli("generate", "--base", str(TOY_BASE), "--subject", str(saved_subject), "--prompts",
                     "a photo of {}", "--out", str(tmp_path / "images"), "--threads", "1", timeout=300,
                     probes={"forbid_model_loads": True})  # any from_pretrained would end it with a traceback
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: subject {saved_subject} was made for base model 'tiny-sd', not for '{TOY_BASE}': its layer "
        f"`down_blocks.0.attentions.0.transformer_blocks.0.attn2` is not a cross-attention layer of the base's UNet.")

    wide = tmp_path / "wide"  # a token-only subject with 48-d vectors (another text encoder's width)
    Subject(SubjectConfig(method="cr", token="<wide>", num_vectors=2, text_hidden_size=48, base_model="wide-sd"),
            torch_randn(2, 48), {}, {}).save(wide)
    monkeypatch.setattr(SubjectPipeline, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(SubjectCheckError, match=r"made for base model 'wide-sd', not for .*: its token vectors are "
                                                r"48-d, the base's text encoder is 32-d"):
        load_pipeline(GenerateConfig(base=str(tiny_sd_dir), subject=str(wide), prompts="p", out="o"))


def torch_randn(*shape):
    import torch

    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))
