"""Token start from an existing word's embedding row: Custom Diffusion's modifier token (Kumari et al., CVPR 2023,
initialised from a rare word, "ktn" by default, as in diffusers' ``train_custom_diffusion.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from subjectgen_diffusers.errors import SubjectgenError


@dataclass
class WordInitTokens:
    """Every vector of the new token starts at the embedding of ``word`` (its first sub-token); no extra loss."""

    word: str

    def initial_rows(self, tokenizer, text_encoder, token_ids: list[int]) -> torch.Tensor:
        ids = tokenizer(self.word, add_special_tokens=False).input_ids
        if not ids:
            raise SubjectgenError(f"init_word {self.word!r} tokenizes to nothing; pass a real word such as 'ktn'.")
        row = text_encoder.get_input_embeddings().weight[ids[0]].detach().float()
        return row.unsqueeze(0).repeat(len(token_ids), 1).clone()

    def extra_loss(self, rows: torch.Tensor) -> torch.Tensor | None:
        return None

    def describe(self) -> dict:
        return {"token_init": "word", "init_word": self.word}
