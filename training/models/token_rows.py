"""The new token's vectors as the only trainable rows of the text encoder's input embedding.

The vocabulary is extended (``tokenizer.add_tokens`` + ``resize_token_embeddings``) so prompts tokenize, but the
resized matrix stays frozen: :class:`TokenRows` wraps it and substitutes its own ``[n, d]`` parameter at the new ids.
Optimising the whole matrix with the other rows' gradients zeroed, as diffusers' textual-inversion and Custom
Diffusion examples do, still lets AdamW's weight decay move every row; here nothing but the new rows is a parameter.
"""

from __future__ import annotations

import torch
from torch import nn

from subjectgen_diffusers.errors import SubjectgenError
from subjectgen_diffusers.methods import token_strings  # noqa: F401 - the one spelling, re-exported


class TokenError(SubjectgenError):
    """The requested token cannot be added to the tokenizer."""


def prompt_with_token(prompt: str, token: str, num_vectors: int) -> str:
    """Fill ``{}`` in a prompt with the (multi-vector) token."""
    return prompt.replace("{}", " ".join(token_strings(token, num_vectors)))


def add_token_to_tokenizer(tokenizer, token: str, num_vectors: int) -> list[int]:
    """Add the token strings to ``tokenizer`` and return their ids; refuse a token the vocabulary already has."""
    strings = token_strings(token, num_vectors)
    vocab = tokenizer.get_vocab()
    taken = [s for s in strings if s in vocab or s.lower() in vocab or f"{s.lower()}</w>" in vocab]
    if taken:
        raise TokenError(
            f"token {taken[0]!r} is already in the tokenizer's vocabulary; pass --token with a new string such as "
            f"'<{token.strip('<>')}-subject>'."
        )
    added = tokenizer.add_tokens(strings)
    if added != len(strings):
        raise TokenError(f"could not add token {token!r} to the tokenizer; pass another --token.")
    ids = tokenizer.convert_tokens_to_ids(strings)
    # Each string must tokenize to exactly its own id, otherwise prompts would not reach the trained vectors.
    for string, token_id in zip(strings, ids):
        encoded = tokenizer(string, add_special_tokens=False).input_ids
        if encoded != [token_id]:
            raise TokenError(f"token {string!r} tokenizes as {encoded}, not as one new id; pass another --token.")
    return list(ids)


class TokenRows(nn.Module):
    """Input-embedding lookup with ``rows`` (a parameter) at ``token_ids`` and the frozen ``base`` elsewhere."""

    def __init__(self, base: nn.Embedding, token_ids: list[int], initial: torch.Tensor):
        super().__init__()
        ids = torch.as_tensor(token_ids, dtype=torch.long)
        if not torch.equal(ids, torch.arange(ids[0], ids[0] + len(ids))):
            raise ValueError("the new token ids must be consecutive")
        if initial.shape != (len(token_ids), base.embedding_dim):
            raise ValueError(f"initial rows have shape {tuple(initial.shape)}, expected {(len(token_ids), base.embedding_dim)}")
        self.base = base
        self.base.weight.requires_grad_(False)
        self.first_id = int(ids[0])
        self.num_rows = len(token_ids)
        self.rows = nn.Parameter(initial.detach().clone().float())

    @property
    def weight(self) -> torch.Tensor:  # what ``get_input_embeddings().weight`` readers expect
        return self.base.weight

    @property
    def embedding_dim(self) -> int:
        return self.base.embedding_dim

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.base(input_ids)
        offset = input_ids - self.first_id
        is_new = (offset >= 0) & (offset < self.num_rows)
        if not bool(is_new.any()):
            return embeds
        new = self.rows.to(embeds.dtype)[offset.clamp(0, self.num_rows - 1)]
        return torch.where(is_new.unsqueeze(-1), new, embeds)


def splice_token_rows(text_encoder, token_ids: list[int], initial: torch.Tensor) -> TokenRows:
    """Resize the text encoder for the new ids and replace its input embedding by a :class:`TokenRows`."""
    text_encoder.resize_token_embeddings(max(token_ids) + 1, mean_resizing=False)
    base = text_encoder.get_input_embeddings()
    rows = TokenRows(base, token_ids, initial.to(base.weight.device))
    text_encoder.set_input_embeddings(rows)
    return rows
