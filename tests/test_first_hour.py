"""A new user's first hour (issue 15): the stumbles of a fresh clone, each guarded through the real CLI or real files.

Threads on a shared CPU, file modes under the user's umask, help and README sentences that say what happens, one
resolution rule, no library noise, a decompression bomb among the photos, a config value of the wrong type.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from _cli import REPO_ROOT, run_cli

TOY_BASE = REPO_ROOT / "training" / "toy" / "weights" / "toy-base"
UMASK = 0o027  # not the usual 022, so modes from the umask are told apart from a coincidence


def _cli_env() -> dict[str, str]:
    """The environment a user's shell has: no test-only verbosity settings, no preset thread or wait policy."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    for name in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "OMP_NUM_THREADS", "OMP_WAIT_POLICY",
                 "MKL_NUM_THREADS"):
        env.pop(name, None)
    return env


def _run_as_user(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "subjectgen_training", *args], cwd=REPO_ROOT, env=_cli_env(),
                          capture_output=True, text=True, timeout=timeout, preexec_fn=lambda: os.umask(UMASK))


@pytest.fixture(scope="module")
def toy_generate(tmp_path_factory):
    """One real `subjectgen generate` on the shipped toy base, as a user runs it (threads given after the command)."""
    out = tmp_path_factory.mktemp("first-hour") / "images"
    result = _run_as_user("generate", "--base", str(TOY_BASE), "--prompts", "a photo of {}", "--num-per-prompt", "1",
                          "--steps", "2", "--out", str(out), "--threads", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- item 1: threads --------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_threads_option_is_taken_before_and_after_the_command(toy_generate, tmp_path):
    out, _ = toy_generate
    assert (out / "manifest.jsonl").is_file()
    before = _run_as_user("--threads", "1", "generate", "--base", str(TOY_BASE), "--prompts", "a photo of {}",
                          "--num-per-prompt", "1", "--steps", "2", "--out", str(tmp_path / "b"))
    assert before.returncode == 0, before.stderr[-3000:]
    refused = _run_as_user("--threads", "0", "generate", "--help")
    assert refused.returncode == 2 and "--threads: must be a positive whole number or 'auto', got '0'" in refused.stderr


_PROBE = """
import json, os, sys
from subjectgen_training.threads import configure_threads
chosen = configure_threads({requested})
policy_before_torch = os.environ.get("OMP_WAIT_POLICY")
import torch
print(json.dumps([chosen, torch.get_num_threads(), policy_before_torch]))
"""


@pytest.mark.parametrize("requested, preset, expected", [
    (1, {}, (1, 1, "PASSIVE")),  # --threads 1
    (2, {"OMP_NUM_THREADS": "1"}, (2, 2, "PASSIVE")),  # --threads wins over the environment
    (None, {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "ACTIVE"}, (1, 1, "ACTIVE")),  # the user's settings are kept
])
def test_torch_gets_the_chosen_threads_and_a_passive_wait_policy_before_it_loads(requested, preset, expected):
    env = {**_cli_env(), **preset}
    result = subprocess.run([sys.executable, "-c", _PROBE.format(requested=requested)], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert tuple(json.loads(result.stdout.strip().splitlines()[-1])) == expected


def test_auto_threads_leave_busy_cores_alone(monkeypatch):
    from subjectgen_training import threads

    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    for load, free in [(0.0, 4), (1.2, 3), (2.6, 1), (3.9, 1), (9.0, 1)]:
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert threads.choose_threads(None, environ={})[0] == free, load


# -- item 5: file modes -----------------------------------------------------------------------------------------------

def test_atomic_writes_get_the_ordinary_mode_of_the_umask(tmp_path):
    import torch
    from PIL import Image

    from subjectgen_diffusers.atomic_io import (atomic_save_image, atomic_save_safetensors, atomic_write_json,
                                                make_staging_dir)

    previous = os.umask(UMASK)
    try:
        files = [atomic_write_json(tmp_path / "report.json", {"a": 1}),
                 atomic_save_image(tmp_path / "image.png", Image.new("RGB", (8, 8))),
                 atomic_save_safetensors(tmp_path / "subject.safetensors", {"x": torch.zeros(2)})]
        folder = make_staging_dir(tmp_path, ".model.")
        os.umask(0o022)
        rewritten = atomic_write_json(tmp_path / "summary.json", {"a": 2})
    finally:
        os.umask(previous)
    assert [oct(_mode(p)) for p in files] == [oct(0o640)] * 3
    assert oct(_mode(folder)) == oct(0o750)
    assert oct(_mode(rewritten)) == oct(0o644) and json.loads(rewritten.read_text()) == {"a": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name, "image.png", "report.json",
                                                          "subject.safetensors", "summary.json"]  # no temp left


@pytest.mark.slow
def test_cli_outputs_are_readable_by_the_group_the_umask_allows(toy_generate):
    out, _ = toy_generate
    written = sorted(out.iterdir())
    assert [p.name for p in written] == ["000-a-photo-of-subject-00.png", "manifest.jsonl"]
    assert {oct(_mode(p)) for p in written} == {oct(0o640)}


# -- item 6: docs say what happens ------------------------------------------------------------------------------------

def test_help_calls_the_toy_model_what_it_is():
    for args in (["--help"], ["demo", "--help"]):
        result = run_cli(*args, timeout=120)
        assert result.returncode == 0, result.stderr
        text = " ".join(result.stdout.split())
        assert "built-in tiny model" not in text
        assert "shipped toy model" in text


def _readme_command(pattern: str) -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    lines = [line for line in readme.splitlines() if line.startswith("subjectgen ") and re.search(pattern, line)]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].split("#")[0])[1:]


def test_readme_a1111_export_line_works_for_a_cd_cr_subject(tmp_path, tiny_pipe):
    from _plugin_fixtures import make_subject

    subject = make_subject(tiny_pipe, "<alice>", scope="kv")
    assert subject.config.method == "cd+cr" and subject.deltas
    subject.save(tmp_path / "subjects" / "alice")
    args = _readme_command(r"--format a1111")
    result = run_cli(*args, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / args[args.index("--out") + 1]
    tiny_pipe.load_textual_inversion(str(out), token="<a1111>")
    assert "<a1111>" in tiny_pipe.tokenizer.get_vocab()


# -- item 7: one resolution rule, the {} default said ---------------------------------------------------------------

RULE = "--resolution must be a positive multiple of 8 (the image side in pixels, e.g. 512), got 0."


def test_generate_and_prepare_refuse_resolution_zero_with_the_same_message(tmp_path):
    generate = run_cli("generate", "--base", str(TOY_BASE), "--prompts", "a photo of {}", "--resolution", "0",
                       "--out", str(tmp_path / "g"), timeout=300)
    (tmp_path / "photos").mkdir()
    prepare = run_cli("prepare", str(tmp_path / "photos"), str(tmp_path / "p"), "--resolution", "0", timeout=300)
    for result in (generate, prepare):
        assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == f"error: {RULE}"
    assert not (tmp_path / "g").exists() and not (tmp_path / "p").exists()


def test_every_config_shares_the_resolution_rule():
    from subjectgen_training.sampling.generate import GenerateConfig, GenerateError
    from subjectgen_training.data.prepare import PrepareConfig, PrepareError
    from subjectgen_training.sampling.regularize import RegularizeConfig, RegularizeError

    builders = [
        (GenerateError, lambda r: GenerateConfig(base="b", prompts="p", out="o", resolution=r)),
        (PrepareError, lambda r: PrepareConfig(photos="p", out="o", resolution=r)),
        (RegularizeError, lambda r: RegularizeConfig(model="m", prompt="p", num=1, out="o", resolution=r)),
    ]
    for error, build in builders:
        for bad in (0, -8, 12):
            with pytest.raises(error, match=re.escape(RULE.replace("got 0.", f"got {bad}"))):
                build(bad)
        build(32)  # the toy base's native size is fine everywhere


@pytest.mark.slow
def test_generate_says_what_the_subject_slot_became(toy_generate):
    out, _ = toy_generate
    help_text = " ".join(run_cli("generate", "--help", timeout=120).stdout.split())
    assert "default: '{} person'" in help_text and "'a person'" in help_text
    entry = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert entry["prompt"] == "a photo of a person"
    assert entry["settings"]["subject_text"] == "a person"
    assert entry["settings"]["resolution"] == 32  # the size used, not the None that asked for the native one


# -- item 8: noise ----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_command_prints_no_torchvision_warnings_and_one_progress_bar(toy_generate):
    _, result = toy_generate
    assert "torchvision" not in result.stderr
    assert "Loading pipeline components" not in result.stderr and "Loading weights" not in result.stderr
    # Count the bars: every tqdm frame ("NN%|") in stderr belongs to the command's own `generate:` bar, which starts
    # once and ends at 100 % (diffusers' per-step bar, which has no description, must not appear).
    frames = [line for line in re.split(r"[\r\n]", result.stderr) if re.search(r"\d+%\|", line)]
    assert frames and all(line.startswith("generate: ") for line in frames), frames
    assert sum(line.startswith("generate:   0%") for line in frames) == 1, frames
    assert frames[-1].startswith("generate: 100%"), frames


def test_the_torchvision_filter_drops_only_that_warning(caplog):
    import logging

    from subjectgen_training.quiet import drop_torchvision_warnings

    drop_torchvision_warnings()
    emitter = logging.getLogger("transformers.utils.import_utils")
    with caplog.at_level(logging.WARNING, logger=emitter.name):
        emitter.warning("`CLIPImageProcessor` requires torchvision (not installed); falling back to `X`.")
        emitter.warning("something else went wrong")
    assert [r.getMessage() for r in caplog.records] == ["something else went wrong"]


def test_quieting_the_libraries_imports_neither_and_acts_when_they_load():
    """The CLI quiets diffusers/transformers for every command; doing so must not import them (about 8 s of CPU a
    command that stops at a bad input would pay first). The switch runs right after a module's own import instead."""
    script = """
import sys
from subjectgen_training.quiet import after_import, quiet_libraries
quiet_libraries()
print(sorted(name for name in ("diffusers", "transformers", "torch") if name in sys.modules))
seen = []
after_import("colorsys", lambda module: seen.append(module.__name__))
print(seen)
import colorsys
print(seen, colorsys.rgb_to_hsv(1.0, 0.0, 0.0))
after_import("colorsys", lambda module: seen.append("again"))
print(seen)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "[]", "['colorsys'] (0.0, 1.0, 1.0)", "['colorsys', 'again']"]


# -- item 10: a decompression bomb among the photos, a value of the wrong type ----------------------------------------

def _huge_png(path: Path, side: int = 20000) -> Path:
    """A valid 1-bit grayscale PNG of side x side pixels (a few kB on disk, 400 million pixels decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


@pytest.mark.slow
def test_prepare_drops_a_decompression_bomb_like_any_unusable_photo(tmp_path, astronaut_image):
    photos = tmp_path / "photos"
    photos.mkdir()
    astronaut_image.save(photos / "astronaut.jpg", quality=95)
    _huge_png(photos / "huge.png")
    out = tmp_path / "prepared"
    result = run_cli("prepare", str(photos), str(out), "--resolution", "128", timeout=300,
                     env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and re.search(r"huge\.png +dropped: image too large", result.stdout)
    report = json.loads((out / "prepare.json").read_text())
    by_file = {entry["file"]: entry for entry in report["photos"]}
    assert by_file["huge.png"]["status"] == "dropped" and by_file["huge.png"]["reason"] == "too_large"
    assert "400000000 pixels" in by_file["huge.png"]["detail"]
    assert by_file["astronaut.jpg"]["status"] == "kept" and (report["kept"], report["dropped"]) == (1, 1)


def test_train_config_of_the_wrong_type_names_the_field_and_the_type(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("base: some/base\nphotos: photos\nmethod: cd\nout: out\nlr: fast\n", encoding="utf-8")
    result = run_cli("train", "--config", str(config), timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: training config: lr wants a number (float) or null, got 'fast' (str).")
    assert not (tmp_path / "out").exists()


def test_every_typed_config_names_the_field_and_the_type():
    from subjectgen_diffusers.subject_format import SubjectConfig, SubjectFormatError
    from subjectgen_training.sampling.generate import GenerateConfig, GenerateError
    from subjectgen_training.data.prepare import PrepareConfig, PrepareError

    with pytest.raises(GenerateError, match=r"generation config: steps wants a whole number \(int\), got 'many'"):
        GenerateConfig.from_dict({"base": "b", "prompts": "p", "out": "o", "steps": "many"})
    with pytest.raises(PrepareError, match=r"prepare config: margin wants a number \(float\), got \[1\] \(list\)"):
        PrepareConfig.from_dict({"photos": "p", "out": "o", "margin": [1]})
    with pytest.raises(GenerateError, match=r"guidance wants a number \(float\), got '7e0' \(str\); write it as a number"):
        GenerateConfig.from_dict({"base": "b", "prompts": "p", "out": "o", "guidance": "7e0"})
    with pytest.raises(SubjectFormatError, match=r"num_vectors wants a whole number \(int\), got True \(bool\)"):
        SubjectConfig.from_dict({"method": "cr", "token": "<s>", "num_vectors": True, "text_hidden_size": 32})
    config = GenerateConfig.from_dict({"base": "b", "prompts": "p", "out": "o", "guidance": 7, "resolution": None})
    assert config.guidance == 7 and config.resolution is None  # an int for a float, null for an optional value
