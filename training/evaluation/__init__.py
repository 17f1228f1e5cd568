"""Batch evaluation of generated images: identity (face descriptors), prompt fidelity (CLIP) and face detection.

Encoders are objects built once (:mod:`.identity`, :mod:`.clip_score`), metrics are pure functions
(:mod:`.metrics`), and :mod:`.evaluate` writes ``results.json``, which the reporter reads alone.
"""

from subjectgen_training.evaluation.evaluate import EvaluateConfig, evaluate_images, read_results

__all__ = ["EvaluateConfig", "evaluate_images", "read_results"]
