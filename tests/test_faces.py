"""FaceAnalyzer on real photos that ship in packages: detection, landmarks, identity distances, missing extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from subjectgen_training.data.faces import FaceAnalyzer, FaceBox, FaceDependencyError, identity_distance


@pytest.fixture(scope="module")
def analyzer():
    return FaceAnalyzer()


def test_astronaut_face_found_most_confident_first(analyzer, astronaut_image):
    boxes = analyzer.detect(astronaut_image)
    assert boxes, "the astronaut photo has a face"
    assert [b.score for b in boxes] == sorted((b.score for b in boxes), reverse=True)
    face = boxes[0]
    # Eileen Collins' face sits in the upper middle of the 512x512 photo, about 90 px wide.
    assert 150 < face.center[0] < 300 and 50 < face.center[1] < 200
    assert 50 < face.width < 160
    assert 0 <= face.left < face.right <= 512 and 0 <= face.top < face.bottom <= 512


def test_detection_on_a_large_photo_maps_boxes_back(analyzer, astronaut_image):
    big = astronaut_image.resize((1536, 1536), Image.BICUBIC)  # detected at max_side=1024, mapped back x1.5
    small_face = analyzer.detect(astronaut_image)[0]
    big_face = analyzer.detect(big)[0]
    assert abs(big_face.center[0] - 3 * small_face.center[0]) < 30
    assert abs(big_face.center[1] - 3 * small_face.center[1]) < 30
    assert 2.3 < big_face.width / small_face.width < 3.7


def test_no_face_in_a_plain_image(analyzer):
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))
    assert analyzer.detect(noise) == []
    assert analyzer.best_descriptor(noise) is None


def test_landmarks_lie_in_the_face(analyzer, grace_hopper_image):
    face = analyzer.detect(grace_hopper_image)[0]
    for count in (5, 68):
        points = analyzer.landmarks(grace_hopper_image, face, points=count)
        assert points.shape == (count, 2)
        margin = face.width * 0.35
        assert (points[:, 0] > face.left - margin).all() and (points[:, 0] < face.right + margin).all()
        assert (points[:, 1] > face.top - margin).all() and (points[:, 1] < face.bottom + margin).all()


def test_identity_distance_separates_two_people(analyzer, astronaut_image, grace_hopper_image):
    astronaut = analyzer.best_descriptor(astronaut_image)
    flipped = analyzer.best_descriptor(astronaut_image.transpose(Image.FLIP_LEFT_RIGHT).resize((400, 400)))
    hopper = analyzer.best_descriptor(grace_hopper_image)
    assert astronaut.shape == (128,) and astronaut.dtype == np.float64
    same = identity_distance(astronaut, flipped)
    different = identity_distance(astronaut, hopper)
    assert same < 0.4 < 0.6 < different
    assert identity_distance(astronaut, astronaut) == 0.0
    with pytest.raises(ValueError):
        identity_distance(astronaut, astronaut[:64])


def test_facebox_geometry():
    box = FaceBox(10, 20, 50, 100, 1.5)
    assert (box.width, box.height, box.area, box.center) == (40, 80, 3200, (30.0, 60.0))
    assert box.to_dict() == {"left": 10, "top": 20, "right": 50, "bottom": 100, "score": 1.5}


def test_missing_dlib_names_the_extra(tmp_path):
    # A real interpreter where `import dlib` fails (a shadowing module that raises ImportError).
    (tmp_path / "dlib.py").write_text("raise ImportError('No module named dlib')\n")
    code = (
        "from subjectgen_training.data.faces import FaceAnalyzer, FaceDependencyError\n"
        "from subjectgen_diffusers.errors import SubjectgenError\n"
        "try:\n    FaceAnalyzer()\nexcept FaceDependencyError as e:\n"
        "    assert isinstance(e, SubjectgenError); print(e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": f"{tmp_path}:{Path(__file__).resolve().parents[1]}", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert 'pip install "subjectgen-diffusers[face]"' in result.stdout
    assert "dlib-bin face-recognition-models" in result.stdout
    assert FaceDependencyError.__mro__[1].__name__ == "SubjectgenError"
