"""Cross Initialization (Pang et al., "Cross Initialization for Face Personalization of Text-to-Image Models",
CVPR 2024).

Start: tokenize every celebrity name (no padding), take the raw token-embedding rows, drop start/end, put the i-th
sub-token in column i (i < n) and average each column over all names; then run ``[bos, m_0 .. m_{n-1}, eos,
pad x (75 - n)]`` through the whole text encoder (position embeddings, every layer with its causal mask, the final
layer norm). The outputs at positions 1..n are the initial vectors ``init_i`` and the regulariser's fixed target.

Loss: ``MSE + reg_weight * mean_i ||e_i - init_i||_2`` (plain L2 norm, not squared), as ``train_cross_init.py`` of
lyuPang/CrossInitialization (the mean pairwise L2 distance to the start, times ``--reg_weight``, added in the training step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from subjectgen_diffusers.errors import SubjectgenError
from subjectgen_training.token_rows import TokenRows

PACKAGED_NAMES = "celeb_names_wiki_v2.txt"


def read_celeb_names(path: str | Path | None = None) -> list[str]:
    """Lines of the celebrity-name list, as they are (duplicates kept); ``path`` replaces the packaged list."""
    if path is None:
        text = resources.files("subjectgen_diffusers.data").joinpath(PACKAGED_NAMES).read_text(encoding="utf-8")
    else:
        path = Path(path)
        if not path.is_file():
            raise SubjectgenError(f"--celeb-names {path} does not exist: pass a text file with one name per line.")
        text = path.read_text(encoding="utf-8")
    names = [line for line in text.splitlines() if line.strip()]
    if not names:
        raise SubjectgenError(f"--celeb-names {path}: no names in it; put one name per line.")
    return names


@torch.no_grad()
def column_means(tokenizer, embedding: torch.Tensor, names: list[str], num_vectors: int) -> torch.Tensor:
    """``[n, d]``: the mean raw embedding of the i-th sub-token of each name, over the names that have one."""
    sums = torch.zeros(num_vectors, embedding.shape[1], dtype=torch.float64)
    counts = torch.zeros(num_vectors, dtype=torch.float64)
    for name in names:
        ids = tokenizer(name, padding="do_not_pad", truncation=True, max_length=tokenizer.model_max_length).input_ids
        for column, token_id in enumerate(ids[1:-1][:num_vectors]):
            sums[column] += embedding[token_id].double()
            counts[column] += 1
    if bool((counts == 0).any()):
        raise SubjectgenError(
            f"the celebrity names give no sub-token for some of the {num_vectors} vectors; use fewer --num-vectors "
            "or a name list with longer names."
        )
    return (sums / counts[:, None]).float()


@torch.no_grad()
def encode_rows(tokenizer, text_encoder, token_ids: list[int], rows: torch.Tensor) -> torch.Tensor:
    """Text-encoder outputs at positions 1..n for the input ``[bos, rows, eos, pad...]`` (77 positions)."""
    n = len(token_ids)
    length = tokenizer.model_max_length
    input_ids = [tokenizer.bos_token_id, *token_ids, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * (length - n - 2)
    original = text_encoder.get_input_embeddings()
    device = original.weight.device
    text_encoder.set_input_embeddings(TokenRows(original, token_ids, rows.to(device)))
    try:
        hidden = text_encoder(torch.tensor([input_ids], device=device)).last_hidden_state
    finally:
        text_encoder.set_input_embeddings(original)
    return hidden[0, 1 : n + 1].float().clone()


@dataclass
class CrossInitTokens:
    """Token start from the celebrity-name mean passed through the text encoder, with the L2 pull back to it."""

    reg_weight: float
    names_file: str | None = None
    # each token's start, by its first id: a joint run (several people) starts every token the same way
    starts: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def target(self) -> torch.Tensor | None:
        """The start of every token row in id order (what the L2 pull draws the rows back to)."""
        return torch.cat([self.starts[k] for k in sorted(self.starts)]) if self.starts else None

    def check_inputs(self) -> None:
        read_celeb_names(self.names_file)

    def initial_rows(self, tokenizer, text_encoder, token_ids: list[int]) -> torch.Tensor:
        names = read_celeb_names(self.names_file)
        embedding = text_encoder.get_input_embeddings().weight
        means = column_means(tokenizer, embedding, names, len(token_ids))
        start = encode_rows(tokenizer, text_encoder, token_ids, means)
        self.starts[int(token_ids[0])] = start
        return start.clone()

    def extra_loss(self, rows: torch.Tensor) -> torch.Tensor | None:
        if self.target is None:
            raise RuntimeError("initial_rows must run before extra_loss")
        if self.reg_weight == 0:
            return None
        target = self.target.to(device=rows.device, dtype=rows.dtype)
        return self.reg_weight * (rows - target).norm(dim=-1).mean()

    def describe(self) -> dict:
        return {"token_init": "cross_init", "reg_weight": self.reg_weight, "celeb_names": self.names_file or PACKAGED_NAMES}
