"""Evaluation: prompt sets, identity on real photos (dlib), CLIP scores with a tiny random CLIP, results.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from _cli import run_cli
from subjectgen_training.evaluation import metrics
from subjectgen_training.evaluation.evaluate import EvaluateConfig, EvaluateError, evaluate_images
from subjectgen_training.prompts import PromptError, available_prompt_sets, load_prompts, prompt_for_clip


def test_shipped_prompt_sets_all_have_the_subject_slot(tmp_path):
    assert {"actions_places", "expressions", "art_styles", "accessories", "experiment"} <= set(available_prompt_sets())
    for name in available_prompt_sets():
        prompts = load_prompts(name)
        assert len(prompts) >= 5 and all(p.count("{}") == 1 for p in prompts), name
    path = tmp_path / "mine.txt"
    path.write_text("# comment\n\na photo of {} at night\n{} smiling\n")
    assert load_prompts(str(path)) == ["a photo of {} at night", "{} smiling"]
    assert load_prompts("a photo of {} | {} in the snow") == ["a photo of {}", "{} in the snow"]
    assert prompt_for_clip("a photo of {} in the snow") == "a photo of a person in the snow"
    with pytest.raises(PromptError, match="does not exist"):
        load_prompts(str(tmp_path / "missing.txt"))


def test_metrics_follow_the_celeb_basis_no_face_protocol():
    refs = [np.array([1.0, 0.0]), np.array([0.0, 1.0])]
    dot = lambda a, b: float(a @ b)  # noqa: E731
    assert metrics.identity_score(None, refs, dot) == 0.0
    assert metrics.identity_score(np.array([1.0, 1.0]), refs, dot) == 1.0
    images = [
        {"face_found": True, "identity": 0.8, "clip_text": 0.3, "clip_image": None},
        {"face_found": False, "identity": 0.0, "clip_text": 0.1, "clip_image": None},
    ]
    summary = metrics.summarize(images)
    assert summary["face_detection_rate"] == 0.5
    assert summary["identity"] == {"mean": pytest.approx(0.4), "std": pytest.approx(0.4), "n": 2}
    assert summary["clip_image"] is None


def _astronaut_crops(astronaut):
    """Reference photos: three different square crops around the astronaut's face."""
    return [astronaut.crop(box).resize((256, 256)) for box in [(90, 0, 330, 240), (110, 10, 310, 210), (60, 0, 360, 300)]]


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory, astronaut_image):
    folder = tmp_path_factory.mktemp("refs")
    for i, crop in enumerate(_astronaut_crops(astronaut_image)):
        crop.save(folder / f"ref{i}.png")
    return folder


@pytest.fixture(scope="module")
def generated_dir(tmp_path_factory, astronaut_image, grace_hopper_image):
    """Stand-ins for generated images, with a manifest like `subjectgen generate` writes."""
    folder = tmp_path_factory.mktemp("images")
    face = astronaut_image.crop((80, 0, 340, 260))
    images = {
        "flipped.png": (ImageOps.mirror(face), "a photo of {}"),
        "rescaled.png": (face.resize((200, 200)), "a photo of {}"),
        "grace.png": (grace_hopper_image.resize((256, 330)), "a photo of {} in uniform"),
        "blank.png": (Image.new("RGB", (256, 256), (120, 160, 200)), "a photo of {} in uniform"),
    }
    with open(folder / "manifest.jsonl", "w") as manifest:
        for seed, (name, (image, template)) in enumerate(images.items()):
            image.save(folder / name)
            manifest.write(json.dumps({"file": name, "prompt": template.replace("{}", "<new1> person"),
                                       "prompt_template": template, "seed": seed}) + "\n")
    return folder


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A random CLIP (real transformers classes, the real tokenizer) saved like a Hub checkpoint."""
    from transformers import CLIPConfig, CLIPModel

    from subjectgen_diffusers.tokenizer import build_clip_tokenizer

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=49407),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    folder = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(folder)
    build_clip_tokenizer().save_pretrained(folder)
    return folder


def test_identity_on_real_photos_separates_the_astronaut_from_grace_hopper(reference_dir, generated_dir, tmp_path):
    pytest.importorskip("dlib")
    out = evaluate_images(EvaluateConfig(images=str(generated_dir), reference=str(reference_dir),
                                         out=str(tmp_path / "results.json"), clip_model="none"))
    results = json.loads(out.read_text())
    by_file = {entry["file"]: entry for entry in results["images"]}
    assert set(by_file["flipped.png"]) >= {"file", "prompt", "face_found", "identity", "clip_text", "clip_image"}
    for same in ("flipped.png", "rescaled.png"):
        assert by_file[same]["face_found"] is True
        assert by_file[same]["identity"] > by_file["grace.png"]["identity"] + 0.3, by_file
        assert by_file[same]["identity"] > 0.7
    assert by_file["grace.png"]["face_found"] is True and by_file["grace.png"]["identity"] < 0.45
    assert by_file["blank.png"] == {**by_file["blank.png"], "face_found": False, "identity": 0.0, "clip_text": None}
    overall = results["summary"]["overall"]
    assert overall["count"] == 4 and overall["face_detection_rate"] == 0.75
    per_prompt = results["summary"]["per_prompt"]
    assert per_prompt["a photo of {} in uniform"]["face_detection_rate"] == 0.5
    assert "likeness (identity) 0" in results["protocol"] and results["settings"]["references_with_face"] == 3
    assert "dlib" in results["settings"]["identity_measure"] and "mean over the reference" in results["settings"]["identity_measure"]


def test_clip_preprocessing_matches_transformers_and_scores_are_cosines(tiny_clip_dir, astronaut_image):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from subjectgen_training.evaluation.clip_score import CLIP_MEAN, CLIP_STD, ClipEmbedder, preprocess

    image = astronaut_image.resize((300, 200))
    reference = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    expected = reference(images=[image], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(preprocess([image], 32, CLIP_MEAN, CLIP_STD), expected, atol=1e-5, rtol=0)

    embedder = ClipEmbedder(str(tiny_clip_dir), batch_size=2)
    images = [astronaut_image, ImageOps.mirror(astronaut_image), Image.new("RGB", (64, 64), "red")]
    image_emb = embedder.embed_images(images)
    text_emb = embedder.embed_texts(["a photo of a person", "a red square", "a photo of a person"])
    torch.testing.assert_close(image_emb.norm(dim=-1), torch.ones(3))
    # batching does not change embeddings; the score is the cosine of the model's projected features
    torch.testing.assert_close(embedder.embed_images(images[:1]), image_emb[:1], atol=1e-5, rtol=0)
    with torch.no_grad():
        pixels = preprocess(images[:1], 32, CLIP_MEAN, CLIP_STD)
        out = embedder.model(input_ids=embedder.tokenizer(["a photo of a person"], return_tensors="pt").input_ids,
                             pixel_values=pixels)
    expected_cosine = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).item()
    assert metrics.clip_text_scores(image_emb, text_emb)[0] == pytest.approx(expected_cosine, abs=1e-5)
    assert metrics.clip_image_scores(image_emb[:1], image_emb[:1]) == [pytest.approx(1.0, abs=1e-5)]


def test_evaluate_cli_writes_results_with_clip_scores(reference_dir, generated_dir, tiny_clip_dir, tmp_path):
    pytest.importorskip("dlib")
    out = tmp_path / "results.json"
    proc = run_cli("evaluate", "--images", str(generated_dir), "--reference", str(reference_dir), "--out", str(out),
                   "--clip-model", str(tiny_clip_dir))
    assert proc.returncode == 0, proc.stderr
    assert "likeness (identity) 0" in proc.stdout and "face detection 75%" in proc.stdout
    results = json.loads(out.read_text())
    for entry in results["images"]:
        assert -1.0 <= entry["clip_text"] <= 1.0 and -1.0 <= entry["clip_image"] <= 1.0
        assert entry["clip_prompt"].startswith("a photo of a person")
    assert results["summary"]["overall"]["clip_text"]["n"] == 4
    missing = run_cli("evaluate", "--images", str(tmp_path / "nope"), "--reference", str(reference_dir),
                      "--out", str(out), "--clip-model", "none")
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and "generate" in missing.stderr


def test_evaluate_rejects_references_without_faces(generated_dir, tmp_path):
    pytest.importorskip("dlib")
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.new("RGB", (128, 128), "white").save(refs / "blank.png")
    with pytest.raises(EvaluateError, match="no face found in any"):
        evaluate_images(EvaluateConfig(images=str(generated_dir), reference=str(refs), out=str(tmp_path / "r.json"),
                                       clip_model="none"))
    with pytest.raises(EvaluateError, match="allowed keys"):
        EvaluateConfig.from_dict({"images": "a", "reference": "b", "out": "c", "clip": "none"})


def test_identity_backends_are_registered_by_name(astronaut_image, reference_dir, generated_dir, tmp_path):
    from subjectgen_training.evaluation.identity import IdentityBackendError, IdentityRegistry, build_identity_encoder

    with pytest.raises(IdentityBackendError, match=r"choose one of \['arcface', 'dlib', 'toy'\]"):
        build_identity_encoder("facenet")
    toy = build_identity_encoder("toy")  # the toy world's encoder, imported only when asked for
    assert toy.name == "toy"

    class MeanColour:
        """A user-registered encoder: no face in a flat grey image, else the mean colour."""

        name = "mean-colour"

        def embed(self, image):
            array = np.asarray(image, dtype=np.float64)
            return None if array.std(axis=(0, 1)).max() < 1 else array.mean(axis=(0, 1))  # flat: "no face"

        def similarity(self, a, b):
            return 1.0 - float(np.abs(a - b).mean()) / 255.0

    registry = IdentityRegistry()
    registry.register("mean-colour", MeanColour)
    config = EvaluateConfig(images=str(generated_dir), reference=str(reference_dir), out=str(tmp_path / "r.json"),
                            face_model="mean-colour", clip_model="none")
    results = json.loads(evaluate_images(config, identity_registry=registry).read_text())
    by_file = {entry["file"]: entry for entry in results["images"]}
    assert by_file["blank.png"]["face_found"] is False and by_file["blank.png"]["identity"] == 0.0
    assert 0.5 < by_file["flipped.png"]["identity"] <= 1.0 and results["settings"]["face_model"] == "mean-colour"
