"""The toy world: deterministic, captions that match the pixels, detectors right on rendered ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from subjectgen_training.toy import detectors, world


def truth_of(spec: world.FaceSpec) -> dict:
    return dict(
        background=spec.background, skin=spec.skin,
        hair_colour=None if spec.hair_style == "bald" else spec.hair_colour, hair_style=spec.hair_style,
        eye_colour=spec.eye_colour, accessory=spec.accessory, mark=spec.mark,
    )


def test_same_seed_same_pixels_and_captions_other_seed_differs():
    first, again, other = world.sample_specs(12, 5), world.sample_specs(12, 5), world.sample_specs(12, 6)
    assert first == again
    assert [s.caption() for s in first] == [s.caption() for s in again]
    assert all(np.array_equal(world.render_array(a), world.render_array(b)) for a, b in zip(first, again))
    assert first != other
    image = world.render(first[0])
    assert image.size == (world.SIZE, world.SIZE) and image.mode == "RGB"


def test_caption_names_visible_attributes_and_never_the_mark():
    spec = world.FaceSpec("blue", "tan", "red", "short", "green", "smiling", "glasses", "round", ("cyan", "left cheek"))
    caption = spec.caption()
    assert caption == ("a smiling round cartoon face with tan skin, short red hair and green eyes, wearing glasses, "
                       "on a blue background")
    for spec in world.sample_specs(200, 1):
        caption = spec.caption()
        assert not any(word in caption for word in (*world.MARK_COLOURS, "cheek", "chin", "mark"))
        assert f"on a {spec.background} background" in caption
        assert ("wearing a hat" in caption) == (spec.accessory == "hat")
        assert ("no hair" in caption) == (spec.hair_style == "bald")


def test_partial_captions_leave_out_exactly_the_omitted_parts_and_read_as_english():
    spec = world.FaceSpec("blue", "tan", "red", "short", "green", "smiling", "hat", "oval")
    assert world.caption_for(spec, omit={"mouth", "eyes"}) == (
        "an oval cartoon face with tan skin and short red hair, wearing a hat, on a blue background")
    assert world.caption_for(spec, omit={"skin", "hair", "accessory"}) == (
        "a smiling oval cartoon face with green eyes, on a blue background")
    assert world.caption_for(spec, omit=set(world.CAPTION_PARTS)) == "a cartoon face"
    rng = np.random.default_rng(0)
    omissions = [world.random_omissions(rng, 0.7) for _ in range(2000)]
    rate = np.mean([len(o) for o in omissions]) / len(world.CAPTION_PARTS)
    assert 0.25 < rate < 0.35  # each part left out with probability 0.3
    assert all(o <= set(world.CAPTION_PARTS) for o in omissions)


def test_captions_match_pixels_on_rendered_ground_truth():
    """Every attribute a caption names (and the unnamed mark) is read back from the pixels by the detectors."""
    specs = world.sample_specs(240, 2024)
    wrong = {key: 0 for key in truth_of(specs[0])}
    for spec in specs:
        reading = detectors.read_face(world.render(spec))
        for key, value in truth_of(spec).items():
            wrong[key] += getattr(reading, key) != value
    assert wrong["background"] == 0 and wrong["skin"] == 0 and wrong["mark"] == 0, wrong
    assert all(count <= 0.03 * len(specs) for count in wrong.values()), wrong


def test_changing_one_attribute_changes_only_its_reading():
    base = world.DEFAULT_SUBJECT.spec("green", dx=0.7, dy=-0.4)
    for change, key, expected in [
        (dict(background="purple"), "background", "purple"),
        (dict(accessory="hat"), "accessory", "hat"),
        (dict(accessory="glasses"), "accessory", "glasses"),
        (dict(hair_colour="black"), "hair_colour", "black"),
        (dict(mark=("magenta", "chin")), "mark", ("magenta", "chin")),
        (dict(mark=None), "mark", None),
    ]:
        before, after = detectors.read_face(world.render(base)), detectors.read_face(world.render(base.replace(**change)))
        assert getattr(after, key) == expected
        others = [k for k in truth_of(base) if k != key]
        assert [getattr(before, k) for k in others] == [getattr(after, k) for k in others], change


def test_likeness_is_high_for_the_subject_and_low_for_random_faces():
    subject = world.DEFAULT_SUBJECT
    photos = [detectors.likeness(world.render(s), subject) for s in subject.photo_specs(6)]
    assert min(photos) >= 0.85
    strangers = [detectors.likeness(world.render(s), subject) for s in world.sample_specs(200, 3)]
    assert np.mean(strangers) < 0.25
    # The hidden mark alone is worth half the score: the same face without it is clearly less "the subject".
    unmarked = detectors.likeness(world.render(subject.spec("red").replace(mark=None)), subject)
    assert unmarked == pytest.approx(0.5)


def test_likeness_survives_prompted_changes_and_prompt_check_reads_them():
    subject = world.DEFAULT_SUBJECT
    for background in world.BACKGROUNDS:
        for accessory in ("hat", "glasses"):
            image = world.render(subject.spec(background, accessory, dx=-1.0, dy=1.0))
            assert detectors.likeness(image, subject) >= 0.85, (background, accessory)
            assert detectors.follows_prompt(image, background=background, accessory=accessory) == 1.0
            assert detectors.follows_prompt(image, background="red" if background != "red" else "blue") == 0.0


def test_photo_specs_vary_background_and_pose_but_not_identity():
    specs = world.DEFAULT_SUBJECT.photo_specs(6, seed=1)
    assert {s.background for s in specs} == set(world.PHOTO_BACKGROUNDS)  # yellow and purple are left for new scenes
    assert len({(s.dx, s.dy) for s in specs}) == 6
    assert {(s.skin, s.hair_colour, s.mark) for s in specs} == {("tan", "red", ("cyan", "left cheek"))}


def test_detectors_accept_other_sizes_and_noise_without_crashing():
    image = world.render(world.DEFAULT_SUBJECT.spec("blue")).resize((64, 64))
    assert detectors.likeness(image) >= 0.85
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    reading = detectors.read_face(noise)
    assert detectors.likeness(noise) <= 0.25 and reading.mark is None
