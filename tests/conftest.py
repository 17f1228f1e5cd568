"""Shared fixtures: tiny real diffusers/transformers models built in-process, with the real CLIP tokenizer."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from _cli import REPO_ROOT

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def pytest_sessionstart(session):
    """Test this checkout: training/ and hub_cards/ are importable only through an install (``package_dir``)."""
    import importlib.util

    for name, folder in (("subjectgen_training", "training"), ("subjectgen_diffusers.hub_cards", "hub_cards")):
        spec = importlib.util.find_spec(name)
        found = Path(spec.origin).parent if spec is not None and spec.origin else None
        if found != REPO_ROOT / folder:
            pytest.exit(f"error: {name} is imported from {found or 'nowhere'}, not from {REPO_ROOT / folder}: "
                        f"run `pip install -e '.[dev]'` in {REPO_ROOT} with this Python ({sys.executable}).",
                        returncode=4)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    """A tiny SD 1.x pipeline saved in diffusers format (shared, read-only)."""
    from subjectgen_training.tiny_models import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "model")


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    from subjectgen_training.tiny_models import save_tiny_sdxl

    return save_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl") / "model")


@pytest.fixture
def tiny_pipe():
    """A fresh tiny SD 1.x pipeline per test (0.1 s to build), free to modify."""
    from subjectgen_training.tiny_models import build_tiny_sd_pipeline

    return build_tiny_sd_pipeline(seed=0)


@pytest.fixture(scope="session")
def astronaut_image():
    """A real photo of a person that ships in scikit-image (public domain, NASA)."""
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.astronaut())


@pytest.fixture(scope="session")
def grace_hopper_image():
    """A real photo of another person that ships in matplotlib."""
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        return Image.open(handle).convert("RGB")
