"""Evaluate a folder of generated images against reference photos and write ``results.json``.

Per image: whether a face is found, identity similarity to the references (Celeb Basis protocol, see
:mod:`subjectgen_training.evaluation.metrics`) and, when the identity encoder splits its similarity into parts (the toy world's
hidden mark and traits), each part; then the prompt scorer's scores (:mod:`subjectgen_training.evaluation.prompt_scorers`:
CLIP-T with the prompt minus the subject token and CLIP-I with the references for real images, pixel-rule
prompt-following for toy ones). Encoders are built once per call; the file is written atomically and read by
:mod:`subjectgen_training.experiment.report` alone.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from subjectgen_diffusers.atomic_io import atomic_write_json
from subjectgen_diffusers.errors import SubjectgenError
from subjectgen_diffusers.strict_config import check_known_keys
from subjectgen_training.config_flags import option
from subjectgen_training.evaluation import metrics
from subjectgen_training.evaluation.clip_score import DEFAULT_CLIP_MODEL
from subjectgen_training.data.photos import candidate_files, load_image, load_photo_folder
from subjectgen_training.prompts import DEFAULT_SUBJECT_PHRASE, prompt_for_clip

logger = logging.getLogger(__name__)

RESULTS_VERSION = 1
MANIFEST_NAME = "manifest.jsonl"


class EvaluateError(SubjectgenError):
    """The images or references cannot be evaluated; the message says what to change."""


@dataclass
class EvaluateConfig:
    """What ``subjectgen evaluate`` does (its flags come from these fields) and the ``evaluate`` section of an
    experiment file (the fields marked ``experiment=False`` are the runner's)."""

    images: str = option(required=True, experiment=False,
                         help="folder of generated images (with generate's manifest.jsonl)")
    reference: str = option(required=True, experiment=False, help="folder of reference photos of the subject")
    out: str = option(required=True, experiment=False, help="results.json to write")
    face_model: str = option("dlib", help="identity encoder: dlib (offline), arcface (insightface), toy, or none")
    clip_model: str = option(DEFAULT_CLIP_MODEL, help="CLIP Hub id, local folder or builtin:tiny-clip (e.g. "
                             "openai/clip-vit-large-patch14), or none to skip the CLIP scores")
    prompt_scorer: str = option("clip", help="prompt score: clip (CLIP-T/CLIP-I), toy (the toy world's pixel rules), "
                                "or none")
    subject_phrase: str = option(DEFAULT_SUBJECT_PHRASE,
                                 help="what replaces {} in each prompt for the CLIP text score")
    device: str | None = option(None, help="torch device for CLIP", default_text="default: cuda when available")
    batch_size: int = option(16, cli=False, help="images per CLIP call")

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise EvaluateError(f"batch_size must be >= 1, got {self.batch_size}.")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluateConfig:
        check_known_keys(cls, data, EvaluateError, "evaluation config")
        return cls(**data)


def read_image_entries(folder: str | Path) -> list[dict[str, Any]]:
    """The images to score: the manifest's entries (file, prompt_template, ...) or every image in the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluateError(f"--images {folder} is not a folder: pass the folder `subjectgen generate` wrote.")
    manifest = folder / MANIFEST_NAME
    if manifest.is_file():
        entries = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
        missing = [e["file"] for e in entries if not (folder / e["file"]).is_file()]
        if missing:
            raise EvaluateError(f"{manifest} lists {len(missing)} missing image(s), e.g. {missing[0]}: rerun generate.")
    else:
        logger.warning("%s has no %s: images are scored without prompts (no CLIP-T).", folder, MANIFEST_NAME)
        entries = [{"file": p.name} for p in candidate_files(folder)]
    if not entries:
        raise EvaluateError(f"--images {folder} holds no images.")
    return entries


def _device(requested: str | None) -> str:
    import torch

    return requested or ("cuda" if torch.cuda.is_available() else "cpu")


def evaluate_images(config: EvaluateConfig, identity_registry=None) -> Path:
    """Score every image of ``config.images``; write and return ``config.out`` (results.json)."""
    from tqdm.auto import tqdm

    from subjectgen_training.evaluation.identity import build_identity_encoder
    from subjectgen_training.evaluation.prompt_scorers import build_prompt_scorer

    entries = read_image_entries(config.images)
    references = [photo.image for photo in load_photo_folder(config.reference, what="--reference")]
    images = [load_image(Path(config.images) / entry["file"]) for entry in entries]
    templates = [entry.get("prompt_template") or entry.get("prompt") for entry in entries]

    identity = [None] * len(images)
    identity_parts: list[dict[str, float] | None] = [None] * len(images)
    face_found: list[bool | None] = [None] * len(images)
    references_with_face = None
    measure = None
    if config.face_model != "none":
        encoder = build_identity_encoder(config.face_model, identity_registry)
        measure = getattr(encoder, "measure", config.face_model) + "; mean over the reference faces"
        reference_embeddings = [e for e in (encoder.embed(image) for image in references) if e is not None]
        references_with_face = len(reference_embeddings)
        if not reference_embeddings:
            raise EvaluateError(
                f"no face found in any of the {len(references)} reference photos in {config.reference}: pass photos "
                "where the face is visible (or --face-model none to skip identity)."
            )
        for index, image in enumerate(tqdm(images, desc="faces", unit="img")):
            embedding = encoder.embed(image)
            face_found[index] = embedding is not None
            identity[index] = metrics.identity_score(embedding, reference_embeddings, encoder.similarity)
            if hasattr(encoder, "parts"):
                identity_parts[index] = metrics.identity_parts(embedding, reference_embeddings, encoder.parts)

    from subjectgen_training.models.builtin_models import resolve_model

    scorer = build_prompt_scorer(config.prompt_scorer, clip_model=resolve_model(config.clip_model),
                                 subject_phrase=config.subject_phrase, device=_device(config.device),
                                 batch_size=config.batch_size)
    prompt_scores = scorer.score(images, templates, references) if scorer else [{} for _ in images]

    results = build_results(config, entries, templates, face_found, identity, prompt_scores,
                            identity_parts=identity_parts, num_references=len(references),
                            references_with_face=references_with_face, identity_measure=measure,
                            prompt_measure=scorer.label if scorer else None)
    atomic_write_json(config.out, results)
    return Path(config.out)


def build_results(config, entries, templates, face_found, identity, prompt_scores, *,
                  num_references: int, references_with_face: int | None, identity_parts=None,
                  identity_measure: str | None = None, prompt_measure: str | None = None) -> dict[str, Any]:
    """Assemble the ``results.json`` document (``images`` + ``summary``) from per-image scores."""
    images = []
    for i, entry in enumerate(entries):
        record = {
            "file": entry["file"],
            "prompt": templates[i],
            "clip_prompt": prompt_for_clip(templates[i], config.subject_phrase) if templates[i] else None,
            "seed": entry.get("seed"),
            "face_found": face_found[i],
            "identity": identity[i],
            "clip_text": prompt_scores[i].get("clip_text"),
            "clip_image": prompt_scores[i].get("clip_image"),
        }
        if identity_parts is not None and identity_parts[i] is not None:
            record["identity_parts"] = identity_parts[i]
        for key in ("prompt_following", "prompt_checks"):
            if key in prompt_scores[i]:
                record[key] = prompt_scores[i][key]
        images.append(record)
    return {
        "version": RESULTS_VERSION,
        "protocol": metrics.PROTOCOL_NOTE if config.face_model != "none" else "identity not computed (--face-model none)",
        "settings": {
            "images": str(config.images),
            "reference": str(config.reference),
            "face_model": config.face_model,
            "identity_measure": identity_measure,
            "clip_model": config.clip_model,
            "prompt_scorer": config.prompt_scorer,
            "prompt_measure": prompt_measure,
            "subject_phrase": config.subject_phrase,
            "num_references": num_references,
            "references_with_face": references_with_face,
        },
        "images": images,
        "summary": {"overall": metrics.summarize(images), "per_prompt": metrics.summarize_by(images, "prompt")},
    }


def read_results(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise EvaluateError(f"{path} does not exist: run `subjectgen evaluate` first.")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "images" not in data or "summary" not in data:
        raise EvaluateError(f"{path} is not a results.json written by `subjectgen evaluate` (needs images and summary).")
    return data
