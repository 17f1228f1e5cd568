"""Identity and prompt scores under the Generate tab's images, by ``subjectgen evaluate``'s own code.

The scores are those of :func:`subjectgen_training.evaluation.evaluate_images` (written as ``results.json`` beside the images, as
``subjectgen evaluate --out`` would): on the shipped toy base the toy world's identity encoder and prompt scorer
(``--face-model toy --prompt-scorer toy``); on a real base dlib's face descriptors when the ``face`` extra is installed
and CLIP when its model loads (offline only from the local cache). A backend that is missing is left out and the page
says so; scoring never fails a generation.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, replace
from pathlib import Path

logger = logging.getLogger(__name__)
RESULTS_NAME = "results.json"


@dataclass(frozen=True)
class Backends:
    face_model: str  # an identity backend of subjectgen_training.evaluation.identity, or "none"
    prompt_scorer: str  # a prompt scorer of subjectgen_training.evaluation.prompt_scorers, or "none"
    subject_phrase: str  # what {} becomes in a prompt for CLIP's text score

    @property
    def any(self) -> bool:
        return self.face_model != "none" or self.prompt_scorer != "none"


def available_backends(toy: bool) -> Backends:
    """The scorers this install can run: the toy world's on the toy base, else those whose packages import."""
    if toy:
        from subjectgen_training.experiment.demos import toy_demo_config

        evaluation = toy_demo_config().evaluate
        return Backends(evaluation.face_model, evaluation.prompt_scorer, evaluation.subject_phrase)
    has = lambda name: importlib.util.find_spec(name) is not None  # noqa: E731
    face = "dlib" if has("dlib") and has("face_recognition_models") else "none"
    return Backends(face, "clip" if has("transformers") else "none", "a person")


def score_folder(images: Path, reference: Path, backends: Backends) -> tuple[dict[str, str], str]:
    """``{file: "identity 0.83 · prompt 0.75"}`` for the images of one ``subjectgen generate`` folder, and what the
    scores measure; the results land in ``images/results.json``. A prompt scorer that cannot be built here (no
    model offline) is dropped."""
    from subjectgen_training.evaluation import EvaluateConfig, evaluate_images, read_results

    config = EvaluateConfig(images=str(images), reference=str(reference), out=str(images / RESULTS_NAME),
                            face_model=backends.face_model, prompt_scorer=backends.prompt_scorer,
                            subject_phrase=backends.subject_phrase)
    try:
        path = evaluate_images(config)
    except Exception as error:  # noqa: BLE001 - a CLIP model not in the cache, no face in the references, ...
        if backends.prompt_scorer == "none":
            raise
        logger.warning("prompt scorer %s unavailable (%s); identity only", backends.prompt_scorer, error)
        path = evaluate_images(replace(config, prompt_scorer="none"))
    results = read_results(path)
    settings = results["settings"]
    measures = [f"identity = {settings['identity_measure']}" if settings.get("identity_measure") else "",
                f"prompt = {settings['prompt_measure']}" if settings.get("prompt_measure") else ""]
    return {entry["file"]: caption(entry) for entry in results["images"]}, "; ".join(m for m in measures if m)


def caption(entry: dict) -> str:
    parts = []
    if entry.get("identity") is not None:
        parts.append(f"identity {entry['identity']:.2f}")
    prompt = entry.get("prompt_following", entry.get("clip_text"))
    if prompt is not None:
        parts.append(f"prompt {prompt:.2f}")
    return " · ".join(parts)
