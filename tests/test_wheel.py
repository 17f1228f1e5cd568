"""The package as a user gets it from PyPI.

``python -m build`` makes the sdist and, from it, the wheel without a warning; ``twine check`` accepts both; the
wheel holds the product (code, toy model, configs, prompts, vocabulary, name list, card template) under this
project's import names only, and not the benchmark results or tests. Installed into a fresh virtual environment
without ``-e``, from a folder outside the repository, it runs ``subjectgen demo`` and loads the trained subject
into a diffusers pipeline with none of the extras' packages importable.

The fresh environment gets the wheel alone (``--no-deps``); its dependencies are the ones this test runs with,
reached through a ``.pth`` line (a path, so the editable install's own ``.pth`` there is not run): installing
torch and diffusers again would take minutes and test pip, not us.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest
from _cli import REPO_ROOT

pytestmark = pytest.mark.slow

DIST_INFO = "subjectgen_diffusers-0.1.0.dist-info"
# Not dependencies of the plug-in (torch, diffusers, transformers, safetensors, huggingface_hub and theirs):
# loading a subject must work when none of these can be imported.
EXTRAS_ONLY = ("accelerate", "peft", "gradio", "dlib", "face_recognition_models", "skimage", "matplotlib")


def _env() -> dict:
    # No PYTHONPATH: nothing may come from the source tree. PYTHONDONTWRITEBYTECODE (set on some machines) only
    # makes setuptools print "byte-compiling is disabled", which is not a packaging warning.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    return {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _build(out: Path) -> tuple[Path, Path, str]:
    build = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO_ROOT)], env=_env(),
                           capture_output=True, text=True, timeout=900)
    log = build.stdout + build.stderr
    assert build.returncode == 0, log[-4000:]
    (wheel,), (sdist,) = out.glob("*.whl"), out.glob("*.tar.gz")
    return wheel, sdist, log


def _check_build_log_and_twine(wheel: Path, sdist: Path, log: str) -> None:
    warnings = [line for line in log.splitlines() if re.search(r"warn", line, re.IGNORECASE)]
    assert not warnings, warnings
    check = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)],
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0 and check.stdout.count("PASSED") == 2, check.stdout + check.stderr


def _source_files(folder: str, pattern: str) -> set[str]:
    return {p.relative_to(REPO_ROOT / folder).as_posix() for p in (REPO_ROOT / folder).rglob(pattern)
            if "__pycache__" not in p.parts}


def _check_wheel_contents(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {name.split("/")[0] for name in names} == {"subjectgen_diffusers", "subjectgen_training", DIST_INFO}
    top_level = zipfile.ZipFile(wheel).read(f"{DIST_INFO}/top_level.txt").decode().split()
    assert sorted(top_level) == ["subjectgen_diffusers", "subjectgen_training"]
    expected = ({f"subjectgen_training/{p}" for p in _source_files("training", "*.py")}
                | {f"subjectgen_diffusers/hub_cards/{p}" for p in _source_files("hub_cards", "*.py")}
                | {f"subjectgen_diffusers/{p}" for p in _source_files("subjectgen_diffusers", "*.py")}
                | {f"subjectgen_training/toy/weights/{p}" for p in _source_files("training/toy/weights", "*.*")}
                | {f"subjectgen_training/configs/{p}" for p in _source_files("training/configs", "*.yaml")}
                | {f"subjectgen_training/prompts/{p}" for p in _source_files("training/prompts", "*.txt")}
                | {"subjectgen_diffusers/hub_cards/subject_card.md", "subjectgen_diffusers/data/PROVENANCE.md",
                   "subjectgen_diffusers/data/bpe_simple_vocab_16e6.txt.gz",
                   "subjectgen_diffusers/data/celeb_names_wiki_v2.txt"})
    assert "subjectgen_training/toy/weights/toy-base/unet/diffusion_pytorch_model.safetensors" in expected
    assert expected - names == set(), "missing from the wheel"
    extra = {name for name in names - expected if not name.startswith(DIST_INFO)}
    assert extra == set(), "in the wheel but not part of the product (benchmark results, notes, tests?)"


def _fresh_venv(root: Path) -> Path:
    """A venv holding nothing of ours; the dependencies are those of the interpreter running this test."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=300)
    python = root / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    deps = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    (Path(purelib) / "_test_dependencies.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    return python


LOAD_SUBJECT = textwrap.dedent("""
    import importlib.util, sys
    from pathlib import Path
    for name in {extras!r}:
        sys.modules[name] = None  # as if no extra were installed
    import torch
    import subjectgen_diffusers, subjectgen_training
    from diffusers import StableDiffusionPipeline
    from subjectgen_diffusers import load_subject, unload_subject

    venv = Path(sys.prefix).resolve()
    for module in (subjectgen_diffusers, subjectgen_training):
        assert Path(module.__file__).resolve().is_relative_to(venv), module.__file__
    for generic in ("training", "hub_cards"):  # the repository's folder names are not installed as modules
        assert importlib.util.find_spec(generic) is None, generic
    assert importlib.util.find_spec("accelerate") is None  # the blocker works

    base = Path(subjectgen_training.__file__).parent / "toy" / "weights" / "toy-base"
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def draw(prompt):
        return pipe(prompt, num_inference_steps=4, height=32, width=32, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images

    token = load_subject(pipe, {subject!r})
    prompt = "a " + token + " cartoon face, on a yellow background"  # the demo's subject phrase, a new scene
    unload_subject(pipe)
    before = draw(prompt)
    assert load_subject(pipe, {subject!r}) == token
    learned = draw(prompt)
    unload_subject(pipe)
    # the subject changes the picture (pixels in [0, 1]; a trained subject moves them far more than 0.01) ...
    assert (learned - before).abs().max() > 0.01, "loading the subject changed nothing"
    # ... and unloading gives the base pipeline back exactly
    assert torch.equal(draw(prompt), before)
    print("loaded", token)

    # `subjectgen generate` needs no extra either (COMMAND_EXTRAS)
    from subjectgen_training.cli import main
    assert main(["generate", "--base", str(base), "--subject", {subject!r}, "--prompts", "{{}}, on a yellow background",
                 "--subject-phrase", "a {{}} cartoon face", "--num-per-prompt", "2", "--steps", "4", "--resolution",
                 "32", "--guidance", "4", "--out", {images!r}]) == 0
""")


@pytest.mark.long
def test_the_wheel_builds_cleanly_holds_the_product_and_runs_installed(tmp_path):
    wheel, sdist, log = _build(tmp_path / "dist")
    _check_build_log_and_twine(wheel, sdist, log)
    _check_wheel_contents(wheel)

    python = _fresh_venv(tmp_path / "venv")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-index", str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    demo = subprocess.run([str(tmp_path / "venv" / "bin" / "subjectgen"), "demo", "--out", "demo"], cwd=outside,
                          env=_env(), capture_output=True, text=True, timeout=1200)
    assert demo.returncode == 0, demo.stderr[-4000:]
    assert f"report (open in a browser): {outside / 'demo' / 'report.html'}" in demo.stdout
    subject = outside / "demo" / "runs" / "shipped" / "cd+cr-reg" / "subject"
    code = LOAD_SUBJECT.format(extras=EXTRAS_ONLY, subject=str(subject), images=str(outside / "images"))
    load = subprocess.run([str(python), "-c", code], cwd=outside, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert load.returncode == 0 and "loaded <" in load.stdout, load.stdout + load.stderr[-4000:]
    assert len(list((outside / "images").rglob("*.png"))) == 2  # `subjectgen generate` with the plug-in alone
