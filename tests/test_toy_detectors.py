"""The toy detectors can be trusted on generated-looking images: every skin x background x hair combination,
rendered and then damaged the way generation damages colours and edges, is read back above the stated accuracy
(training/toy/detector_check.py; the full table with every damage is in training/toy/README.md)."""

from __future__ import annotations

import pytest

from subjectgen_training.toy import detector_check


@pytest.mark.slow
def test_every_attribute_stays_above_the_stated_accuracy_under_generation_like_damage():
    # seed 7: faces other than the ones the detector fixes were checked on (seed 1) and the README table (seed 0)
    table = detector_check.rendered_table(per_combination=1, seed=7, damages=("none", "all four"))
    for damage, row in table.items():
        for attribute in detector_check.ATTRIBUTES:
            assert row[attribute] >= detector_check.REQUIRED_ACCURACY, (damage, attribute, row)
        assert row["mark false positives"] <= detector_check.MAX_MARK_FALSE_POSITIVES, (damage, row)
    assert table["none"]["worst combination (all right)"] == 1.0  # undamaged renders are read exactly


def test_damages_change_pixels_but_keep_the_image_shape():
    import numpy as np

    from subjectgen_training.toy import world

    array = world.render_array(world.DEFAULT_SUBJECT.spec("red"))
    rng = np.random.default_rng(0)
    for name, damage in detector_check.DAMAGES.items():
        damaged = damage(array, rng)
        assert damaged.shape == array.shape
        assert (name == "none") == bool(np.array_equal(damaged, array)), name
    assert len(detector_check.combinations()) == 3 * 6 * (5 * 2 + 1)  # bald heads have no hair colour


def test_hand_labelled_generated_images_are_read_above_the_stated_accuracy():
    """Generated images (toy-base samples, every setup of the population experiment and of issue 28's run on a dark
    face with long blond hair) labelled by eye, shipped in tests/data/toy_labelled: every attribute holds its bar on
    the development part (where the bars were chosen) and on the held-out part (where they were checked); the hidden
    mark is never read where none was drawn; and the marks of the images the mark bar was set on are found."""
    labels = detector_check.read_labels()
    assert len(labels) >= 132 and all((detector_check.LABELLED / entry["file"]).is_file() for entry in labels)
    assert {entry["part"] for entry in labels} == set(detector_check.LABELLED_PARTS)
    assert sum(entry["mark"] == "none" for entry in labels) >= 15  # enough images without a mark to see false ones
    for part in detector_check.LABELLED_PARTS:
        table = detector_check.labelled_table(part=part)
        for attribute in detector_check.ATTRIBUTES:
            assert table[f"{attribute} labelled"] >= 10, (part, attribute, table)
            known = (part, attribute) in detector_check.KNOWN_BELOW_BAR  # found below its bar, said why; still so
            assert (table[attribute] >= detector_check.REQUIRED_LABELLED[attribute]) != known, (part, attribute, table)
        assert table["mark false positives"] <= detector_check.MAX_LABELLED_MARK_FALSE_POSITIVES, (part, table)
    marks = detector_check.labelled_table(files=detector_check.MARK_BAR_FILES)
    assert marks["marks found"] >= detector_check.REQUIRED_MARKS_FOUND, marks


def test_heads_are_found_for_every_skin_and_hair_colour_above_the_floor():
    """Issue 28: the rules missed heads a person plainly sees (dark skin beside long light hair on yellow or purple).
    Every skin x hair-colour pair of the world appears on at least two backgrounds in the labelled set, and for each
    pair (and each skin's bald heads) the heads found are at least the floor stated in training/toy/README.md."""
    from subjectgen_training.toy import world

    labels = detector_check.read_labels()
    backgrounds: dict[str, set] = {}
    for entry in labels:
        if detector_check.combination_of(entry) is not None:
            backgrounds.setdefault(detector_check.combination_of(entry), set()).add(entry["background"])
    for skin in world.SKINS:
        for colour in world.HAIR_COLOURS:
            assert len(backgrounds.get(f"{skin}/{colour}", set()) - {None}) >= 2, (skin, colour, backgrounds)
    heads = detector_check.labelled_table()["head by combination"]
    assert len(heads) >= len(world.SKINS) * len(world.HAIR_COLOURS)
    for combination, (found, labelled) in heads.items():
        known = combination in detector_check.KNOWN_BELOW_FLOOR  # found below the floor, said why; still so
        assert (found / labelled >= detector_check.HEAD_FLOOR) != known, (combination, found, labelled, heads)


def test_labels_name_only_what_the_world_has():
    from subjectgen_training.toy import world

    allowed = {"background": set(world.BACKGROUNDS), "skin": set(world.SKINS), "hair_colour": set(world.HAIR_COLOURS),
               "hair_style": set(world.HAIR_STYLES), "accessory": set(world.ACCESSORIES), "head": {True, False},
               "mark": {"none"} | {f"{c} {p}" for c in world.MARK_COLOURS for p in world.MARK_PLACES}}
    for entry in detector_check.read_labels():
        for key, values in allowed.items():
            assert entry[key] is None or entry[key] in values, (entry["file"], key, entry[key])
