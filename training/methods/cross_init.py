"""Cross Initialization (Pang et al., "Cross Initialization for Face Personalization of Text-to-Image Models",
CVPR 2024).

Start: tokenize every celebrity name (no padding), take the raw token-embedding rows, drop start/end, put the i-th
sub-token in column i (i < n) and average each column over all names; then run ``[bos, m_0 .. m_{n-1}, eos,
pad x (75 - n)]`` through the text encoder and take the features the pipeline feeds the UNet at positions 1..n
(``subjectgen_training.models.text_features``): for SD 1.x the whole encoder with its final layer norm, as the reference.
Those are the initial vectors ``init_i`` and the regulariser's fixed target.

Several text encoders (SDXL): each encoder's new rows start the same way from *that* encoder's own table, tokenizer
and features (SDXL: its penultimate hidden states, the part of the UNet's context it gives), and each is pulled back
to its own start. The pooled text embedding SDXL also feeds the UNet (encoder 2's projected output at the end token)
gets no start of its own: it follows from the rows through the encoder.

Loss: ``MSE + reg_weight * mean_i ||e_i - init_i||_2`` (plain L2 norm, not squared), as ``train_cross_init.py`` of
lyuPang/CrossInitialization (the mean pairwise L2 distance to the start, times ``--reg_weight``, added in the training
step); with several encoders the pulls of the encoders add up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from subjectgen_diffusers.errors import SubjectgenError
from subjectgen_training.config_flags import option
from subjectgen_training.methods.base import MethodConfigError
from subjectgen_training.models.token_rows import TokenRows

PACKAGED_NAMES = "celeb_names_wiki_v2.txt"


@dataclass
class CrossInitOptions:
    """The training fields of cross-initialised tokens (methods ``cr`` and ``cd+cr``)."""

    reg_weight: float = option(1e-5, help="Cross Initialization's L2 pull of the token towards its start")
    celeb_names: str | None = option(None, help="replace the packaged celebrity-name list (one name per line) of "
                                     "Cross Initialization", default_text="default: the packaged list")

    def __post_init__(self) -> None:
        if self.reg_weight < 0:
            raise MethodConfigError(f"reg_weight must be >= 0, got {self.reg_weight}.")


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
def encode_rows(view, token_ids: list[int], rows: torch.Tensor) -> torch.Tensor:
    """An encoder's UNet features at positions 1..n for the input ``[bos, rows, eos, pad...]`` (77 positions)."""
    tokenizer, text_encoder = view.tokenizer, view.text_encoder
    n = len(token_ids)
    length = tokenizer.model_max_length
    input_ids = [tokenizer.bos_token_id, *token_ids, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * (length - n - 2)
    original = text_encoder.get_input_embeddings()
    device = original.weight.device
    text_encoder.set_input_embeddings(TokenRows(original, token_ids, rows.to(device)))
    try:
        hidden = view.features(torch.tensor([input_ids], device=device))
    finally:
        text_encoder.set_input_embeddings(original)
    return hidden[0, 1 : n + 1].float().clone()


@dataclass
class CrossInitTokens:
    """Token start from the celebrity-name mean passed through the text encoder, with the L2 pull back to it."""

    reg_weight: float
    names_file: str | None = None
    # each token's start, by encoder and first id: a joint run (several people) starts every token the same way
    starts: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict, repr=False)

    def target_of(self, encoder: str | None = None) -> torch.Tensor | None:
        """The start of every token row of ``encoder`` (default: the first one started) in id order."""
        if not self.starts:
            return None
        encoder = encoder or next(iter(self.starts))[0]
        return torch.cat([self.starts[key] for key in sorted(k for k in self.starts if k[0] == encoder)])

    @property
    def target(self) -> torch.Tensor | None:
        """The first encoder's start (the only one on SD 1.x)."""
        return self.target_of()

    def check_inputs(self) -> None:
        read_celeb_names(self.names_file)

    def initial_rows_for(self, view, token_ids: list[int]) -> torch.Tensor:
        """The start of ``token_ids`` in the encoder of ``view`` (a :class:`subjectgen_training.models.text_features.EncoderView`)."""
        names = read_celeb_names(self.names_file)
        embedding = view.text_encoder.get_input_embeddings().weight
        means = column_means(view.tokenizer, embedding, names, len(token_ids))
        start = encode_rows(view, token_ids, means)
        self.starts[(view.name, int(token_ids[0]))] = start
        return start.clone()

    def extra_loss(self, rows: torch.Tensor, encoder: str | None = None) -> torch.Tensor | None:
        target = self.target_of(encoder)
        if target is None:
            raise RuntimeError("initial_rows_for must run before extra_loss")
        if self.reg_weight == 0:
            return None
        target = target.to(device=rows.device, dtype=rows.dtype)
        return self.reg_weight * (rows - target).norm(dim=-1).mean()

    def describe(self) -> dict:
        return {"token_init": "cross_init", "reg_weight": self.reg_weight, "celeb_names": self.names_file or PACKAGED_NAMES}
