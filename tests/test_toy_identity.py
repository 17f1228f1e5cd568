"""The toy identity backend and prompt check, through the evaluation package's registry and on real files."""

from __future__ import annotations

import numpy as np
import pytest

from subjectgen_training.toy import identity, prompt_check, world
from subjectgen_training.toy.subject_photos import write_subject_photos


def test_toy_backend_is_registered_and_scores_the_subject_above_strangers(tmp_path):
    from subjectgen_training.evaluation.identity import build_identity_encoder
    from subjectgen_training.evaluation.metrics import identity_score
    from subjectgen_training.data.photos import load_photo_folder

    encoder = build_identity_encoder("toy")
    photos = load_photo_folder(write_subject_photos(tmp_path / "photos", count=5), what="--photos")
    references = [encoder.embed(p.image) for p in photos]
    assert all(r is not None for r in references)
    truth = identity.encode_subject(world.DEFAULT_SUBJECT)
    assert all(np.array_equal(r[[0, 1, 2, 4, 5]], truth[[0, 1, 2, 4, 5]]) for r in references)

    new_scene = world.render(world.DEFAULT_SUBJECT.spec("purple", "hat", dx=1.2))
    assert identity_score(encoder.embed(new_scene), references, encoder.similarity) == pytest.approx(1.0)
    strangers = [identity_score(encoder.embed(world.render(s)), references, encoder.similarity)
                 for s in world.sample_specs(100, 9)]
    assert np.mean(strangers) < 0.25
    twin_without_mark = world.render(world.DEFAULT_SUBJECT.spec("red").replace(mark=("magenta", "left cheek")))
    assert identity_score(encoder.embed(twin_without_mark), references, encoder.similarity) == pytest.approx(0.5)


def test_no_head_means_no_embedding():
    blank = np.full((32, 32, 3), world.BACKGROUNDS["blue"], dtype=np.uint8)
    from PIL import Image

    assert identity.ToyIdentity().embed(Image.fromarray(blank)) is None


def test_subject_photo_folder_has_placeholder_captions_without_the_subjects_traits(tmp_path):
    folder = write_subject_photos(tmp_path / "p", count=4, seed=3)
    captions = [p.read_text() for p in sorted(folder.glob("photo_*.txt"))]
    assert len(captions) == 4 and all(c.startswith("a {} cartoon face") for c in captions)
    assert not any(word in c for c in captions for word in ("red hair", "tan", "cyan", "cheek", "green eyes"))
    assert (folder / "subject.json").is_file()


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a <new1> cartoon face, wearing a hat, on a green background", {"background": "green", "accessory": "hat"}),
        ("a cartoon face, wearing glasses, on a yellow background", {"background": "yellow", "accessory": "glasses"}),
        ("a cartoon face on an orange background", {}),
        ("a cartoon face", {}),
    ],
)
def test_prompt_requests_are_read_from_words(prompt, expected):
    assert prompt_check.requested(prompt) == expected


def test_prompt_score_on_rendered_truth():
    image = world.render(world.DEFAULT_SUBJECT.spec("green", "hat"))
    assert prompt_check.prompt_score(image, "a face, wearing a hat, on a green background") == 1.0
    assert prompt_check.prompt_score(image, "a face, wearing glasses, on a green background") == 0.5
    assert prompt_check.prompt_score(image, "a face, on a red background") == 0.0
    assert prompt_check.prompt_score(image, "a face") is None
