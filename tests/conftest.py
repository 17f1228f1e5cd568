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


def pytest_collection_modifyitems(session, config, items):
    """Tests marked ``long`` (a minute or more each; ``long(minutes=N)`` for the longest) go first, longest first:
    ``pytest -n 2`` hands tests out in order, so a long one started late keeps one worker busy after the other has
    finished everything else."""
    def minutes(item) -> float:
        marker = item.get_closest_marker("long")
        return 0.0 if marker is None else float(marker.kwargs.get("minutes", 1))

    items.sort(key=lambda item: -minutes(item))  # stable: the same order on every worker


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    """A tiny SD 1.x pipeline saved in diffusers format (shared, read-only)."""
    from subjectgen_training.models.tiny_models import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "model")


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    from subjectgen_training.models.tiny_models import save_tiny_sdxl

    return save_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl") / "model")


@pytest.fixture
def tiny_pipe():
    """A fresh tiny SD 1.x pipeline per test (0.1 s to build), free to modify."""
    from subjectgen_training.models.tiny_models import build_tiny_sd_pipeline

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


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory, astronaut_image) -> Path:
    """Four overlapping crops of one real person's photo: the training photos the trainer tests share (read-only)."""
    folder = tmp_path_factory.mktemp("photos")
    for i, box in enumerate([(0, 0, 400, 400), (50, 0, 450, 400), (0, 30, 420, 450), (80, 20, 480, 420)]):
        astronaut_image.crop(box).save(folder / f"photo{i}.png")
    return folder


@pytest.fixture(scope="session")
def reg_dir(tmp_path_factory, grace_hopper_image) -> Path:
    """Two class images of another real person (read-only)."""
    folder = tmp_path_factory.mktemp("reg")
    for i in range(2):
        grace_hopper_image.rotate(5 * i).save(folder / f"reg{i}.png")
    return folder
