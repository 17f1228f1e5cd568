"""Model-card templates rendered when a subject is pushed to the Hugging Face Hub (package data: ``*.md``)."""

from __future__ import annotations

from importlib import resources

SUBJECT_CARD = "subject_card.md"


def read_template(name: str = SUBJECT_CARD) -> str:
    """The text of a card template shipped in this package."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
