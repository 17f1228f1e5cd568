"""The toy world plugs into the one runner through registries: the `toy:` photo source, the `toy` identity encoder
(with its hidden-mark / traits split) and the `toy` prompt scorer (with each request's own outcome)."""

from __future__ import annotations

import json

import pytest

from subjectgen_training.evaluation import EvaluateConfig, evaluate_images
from subjectgen_training.evaluation.prompt_scorers import PromptScorerError, build_prompt_scorer
from subjectgen_training.experiment.photo_sources import PhotoSourceError, is_photo_source, write_source_photos
from subjectgen_training.sampling.generate import MANIFEST_NAME
from subjectgen_training.data.photos import load_photo_folder
from subjectgen_training.toy import world
from subjectgen_training.toy.subject_photos import ToySubjectSpecError, parse_subject_spec, read_subject


def test_subject_specs_name_the_shipped_face_a_drawn_face_or_traits():
    assert parse_subject_spec("shipped") == (world.DEFAULT_SUBJECT, 6, 0)
    drawn, count, seed = parse_subject_spec("seed=101,count=4,photo_seed=3")
    assert drawn == world.draw_subject(101) and (count, seed) == (4, 3)
    assert drawn != world.DEFAULT_SUBJECT and world.draw_subject(101) == world.draw_subject(101)
    edited = parse_subject_spec("seed=101, skin=light, mark=magenta/chin")[0]
    assert edited == world.draw_subject(101).__class__(**{**world.draw_subject(101).__dict__, "skin": "light",
                                                         "mark": ("magenta", "chin")})
    assert parse_subject_spec("hair_style=long")[0].hair_style == "long"  # traits on top of the shipped face
    for bad, message in [("seed=x", "integers"), ("skin=green", "skin must be one of"), ("mark=cyan", "mark is"),
                         ("hair=red", "key=value items"), ("seed=1,seed=2", "each key once"), ("", "names no subject"),
                         ("count=0", "count must be")]:
        with pytest.raises(ToySubjectSpecError, match=message):
            parse_subject_spec(bad)


def test_toy_photo_source_writes_captioned_photos_the_trainer_reads(tmp_path):
    assert is_photo_source("toy:seed=3") and is_photo_source("builtin:astronaut") and not is_photo_source("photos/me")
    folder = write_source_photos("toy:seed=3,count=4", tmp_path / "photos")
    photos = load_photo_folder(folder, what="--photos")
    assert len(photos) == 4
    captions = sorted((folder / f"photo_{i}.txt").read_text() for i in range(4))
    assert all(c.startswith("a {} cartoon face, on a ") for c in captions)  # never the traits or the mark
    assert read_subject(folder) == world.draw_subject(3)
    with pytest.raises(PhotoSourceError, match="known sources are builtin:, toy:"):
        write_source_photos("nope:1", tmp_path / "x")
    with pytest.raises(PhotoSourceError, match="builtin:astronaut"):
        write_source_photos("builtin:someone", tmp_path / "x")


def _write_generated(folder, specs_and_prompts):
    folder.mkdir(parents=True)
    lines = []
    for index, (spec, prompt) in enumerate(specs_and_prompts):
        name = f"{index:03d}.png"
        world.render(spec).save(folder / name)
        lines.append(json.dumps({"file": name, "prompt_template": prompt, "seed": index}))
    (folder / MANIFEST_NAME).write_text("\n".join(lines) + "\n")


def test_toy_evaluation_splits_likeness_and_scores_each_request(tmp_path):
    subject = world.draw_subject(5)
    write_source_photos("toy:seed=5", tmp_path / "photos")
    stranger = world.draw_subject(6)
    _write_generated(tmp_path / "images", [
        (subject.spec("yellow"), "{}, on a yellow background"),  # all right
        (subject.spec("purple", "hat").replace(mark=None), "{}, wearing a hat, on a purple background"),  # no mark
        (subject.spec("yellow", "none"), "{}, wearing glasses, on a yellow background"),  # glasses lost
        (stranger.spec("blue", "glasses").replace(mark=("magenta", "chin") if stranger.mark != ("magenta", "chin")
                                                  else ("lime", "chin")), "{}, wearing glasses, on a purple background"),
    ])
    out = evaluate_images(EvaluateConfig(images=str(tmp_path / "images"), reference=str(tmp_path / "photos"),
                                         out=str(tmp_path / "results.json"), face_model="toy", prompt_scorer="toy"))
    results = json.loads(out.read_text())
    images = results["images"]
    assert [i["identity_parts"]["hidden_mark"] for i in images[:3]] == [1.0, 0.0, 1.0]
    assert [i["identity_parts"]["traits"] for i in images[:3]] == [1.0, 1.0, 1.0]
    assert images[0]["identity"] == 1.0 and images[1]["identity"] == 0.5
    assert images[3]["identity_parts"]["hidden_mark"] == 0.0
    assert [i["prompt_checks"] for i in images] == [{"background": 1.0}, {"background": 1.0, "hat": 1.0},
                                                    {"background": 1.0, "glasses": 0.0},
                                                    {"background": 0.0, "glasses": 1.0}]
    assert [i["prompt_following"] for i in images] == [1.0, 1.0, 0.5, 0.5]
    assert all(i["clip_text"] is None for i in images)
    summary = results["summary"]["overall"]
    assert summary["prompt_checks"]["glasses"]["mean"] == 0.5 and summary["prompt_checks"]["hat"]["mean"] == 1.0
    assert summary["identity_parts"]["hidden_mark"]["mean"] == 0.5
    assert results["settings"]["prompt_measure"] == "prompt-following"


def test_prompt_scorer_registry_names_the_known_scorers():
    with pytest.raises(PromptScorerError, match=r"choose one of \['clip', 'toy'\]"):
        build_prompt_scorer("dino", clip_model="none", subject_phrase="a person")
    assert build_prompt_scorer("clip", clip_model="none", subject_phrase="a person") is None
    assert build_prompt_scorer("toy", clip_model="x", subject_phrase="a person").name == "toy"
