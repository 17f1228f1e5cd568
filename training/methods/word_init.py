"""Token start from an existing vocabulary entry: Custom Diffusion's modifier token (Kumari et al., CVPR 2023).

The references look the initializer word up as *one vocabulary entry*, not through BPE: diffusers'
``examples/custom_diffusion/train_custom_diffusion.py`` calls ``tokenizer.encode([initializer_token],
add_special_tokens=False)`` on the slow ``CLIPTokenizer`` (``use_fast=False``), which takes the list as ready-made
tokens; adobe-research/custom-diffusion hard-codes row 42170 for its default ``ktn`` in ``src/custom_modules.py``. In
SD's CLIP vocabulary ``ktn`` is entry 42170 (the piece without ``</w>``); run through BPE the word would become
``k`` + ``tn``. A word that is no entry does not make the diffusers script fail: the slow tokenizer maps it to its
unknown token, ``<|endoftext|>`` (id 49407), a single id, so its ``len(token_ids) > 1`` check passes and the new token
silently starts from the end-of-text row.

Here: a word that is one vocabulary entry (exactly as spelled, as the references) starts every vector of the new
token at that row. Any other word starts from the mean of the rows of its BPE pieces, which is logged, instead of
the reference's silent ``<|endoftext|>`` start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from subjectgen_diffusers.errors import SubjectgenError
from subjectgen_training.config_flags import option

logger = logging.getLogger(__name__)


@dataclass
class WordInitOptions:
    """The training field of a token started from a vocabulary entry (method ``cd``)."""

    init_word: str = option("ktn", help="word whose embedding starts the token (Custom Diffusion's modifier token)")


def init_word_ids(tokenizer, word: str) -> tuple[list[int], str]:
    """``(ids, how)``: the vocabulary entry of ``word`` if it is one (``how="vocabulary entry"``), otherwise its BPE
    pieces (``how="mean of BPE pieces"``)."""
    entry = tokenizer.get_vocab().get(word)
    if entry is not None:
        return [int(entry)], "vocabulary entry"
    pieces = tokenizer(word, add_special_tokens=False).input_ids
    if not pieces:
        raise SubjectgenError(f"init_word {word!r} tokenizes to nothing; pass a real word such as 'ktn'.")
    return list(pieces), "mean of BPE pieces"


@dataclass
class WordInitTokens:
    """Every vector of the new token starts at the row of ``word`` (see the module docstring); no extra loss."""

    word: str
    ids: list[int] = field(default_factory=list)
    how: str = ""

    def initial_rows(self, tokenizer, text_encoder, token_ids: list[int]) -> torch.Tensor:
        self.ids, self.how = init_word_ids(tokenizer, self.word)
        if len(self.ids) > 1:
            logger.info("init_word %r is not one vocabulary entry: the token starts from the mean of its pieces %s",
                        self.word, tokenizer.convert_ids_to_tokens(self.ids))
        table = text_encoder.get_input_embeddings().weight.detach()
        row = table[self.ids].float().mean(dim=0)
        return row.unsqueeze(0).repeat(len(token_ids), 1).clone()

    def initial_rows_for(self, view, token_ids: list[int]) -> torch.Tensor:
        """The same start in any text encoder: the word's row of that encoder's own table."""
        return self.initial_rows(view.tokenizer, view.text_encoder, token_ids)

    def extra_loss(self, rows: torch.Tensor, encoder: str | None = None) -> torch.Tensor | None:
        return None

    def describe(self) -> dict:
        return {"token_init": "word", "init_word": self.word, "init_token_ids": self.ids, "init_word_lookup": self.how}
