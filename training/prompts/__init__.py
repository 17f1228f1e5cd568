"""Prompt sets for generation and evaluation, shipped as package data (``training/prompts/<name>.txt``).

One prompt per line, ``#`` starts a comment, ``{}`` stands for the subject: it is filled with the trained token for
generation and with a plain phrase (``a person``) for the CLIP text score, so the score measures the prompt's
content rather than the token (the protocol of Celeb Basis, Yuan et al. 2023, and Cross Initialization, Pang et al.
2024). Sets: ``actions_places``, ``expressions``, ``art_styles``, ``accessories`` and ``experiment`` (two prompts of
each, plus the plain ``a photo of {}``), which the shipped experiment configs use.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from subjectgen_diffusers.errors import SubjectgenError

SUBJECT_SLOT = "{}"
DEFAULT_SUBJECT_PHRASE = "a person"


class PromptError(SubjectgenError):
    """A prompt set cannot be read; the message says what to pass instead."""


def available_prompt_sets() -> list[str]:
    """Names of the prompt sets shipped with the package."""
    return sorted(p.name[:-4] for p in resources.files(__name__).iterdir() if p.name.endswith(".txt"))


def parse_prompt_lines(text: str) -> list[str]:
    """Prompts from text: one a line, blank lines and ``#`` comments dropped."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def load_prompts(spec: str) -> list[str]:
    """Prompts from a shipped set's name, a text file's path, or the prompt text itself (``|`` separates several)."""
    spec = spec.strip()
    if not spec:
        raise PromptError(f"empty prompt: pass a file, one of the shipped sets {available_prompt_sets()}, or text.")
    if spec in available_prompt_sets():
        prompts = parse_prompt_lines(resources.files(__name__).joinpath(f"{spec}.txt").read_text(encoding="utf-8"))
    elif Path(spec).is_file():
        prompts = parse_prompt_lines(Path(spec).read_text(encoding="utf-8"))
    elif spec.endswith(".txt") or "/" in spec:
        raise PromptError(f"prompt file {spec} does not exist: pass an existing file or a shipped set "
                          f"{available_prompt_sets()}.")
    else:
        prompts = [p.strip() for p in spec.split("|") if p.strip()]
    if not prompts:
        raise PromptError(f"{spec} holds no prompts: write one prompt per line ('#' starts a comment).")
    return prompts


def fill_subject(template: str, text: str) -> str:
    """Put ``text`` where the template says ``{}`` (other braces are left alone)."""
    return template.replace(SUBJECT_SLOT, text)


def prompt_for_clip(template: str, subject_phrase: str = DEFAULT_SUBJECT_PHRASE) -> str:
    """The prompt without the subject token, as the CLIP text-image score reads it."""
    return " ".join(fill_subject(template, subject_phrase).split())


def regularization_captions(class_prompts: list[str]) -> list[str]:
    """Ordinary captions for a constrained merge (``subjectgen merge``): every shipped prompt set with ``{}`` read as
    each class phrase, plus the class phrases themselves; each once, in a stable order."""
    captions: list[str] = []
    for phrase in class_prompts:
        captions.append(phrase)
        for name in available_prompt_sets():
            captions += [fill_subject(template, phrase) for template in load_prompts(name)]
    return list(dict.fromkeys(captions))


def class_phrases(subjects, given: list[str] | None) -> list[str]:
    """The class phrases of a merge's regularisation captions: ``given``, else each subject's recorded
    ``class_prompt`` (each once), else ``a person``."""
    if given:
        return given
    recorded = [s.config.training.get("class_prompt") for s in subjects]
    return list(dict.fromkeys(p for p in recorded if p)) or ["a person"]
