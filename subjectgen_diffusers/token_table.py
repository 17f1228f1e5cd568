"""Add and remove a subject's token vectors in milliseconds: the tokenizer's added tokens and the text encoder's rows.

diffusers' textual-inversion loader (0.42) does the same job in about a second for SD 1.5: growing the embedding goes
through transformers' ``resize_token_embeddings``, which builds a new ``nn.Embedding`` (random-initialising all
49,408 x 768 rows before copying the old ones over), and unloading serialises the whole tokenizer to JSON and parses it
back. Here:

- rows live in a buffer with spare rows at the end; the text encoder's embedding weight is a view of its first
  ``n`` rows, so adding or removing a token re-slices the buffer and copies only the token rows (the token table is
  copied once, on the first load into a pipeline);
- tokens are added with the tokenizer's own ``add_tokens``; removing rebuilds the Rust tokenizer around the *same*
  model, normaliser, pre-tokeniser, post-processor and decoder objects (shared, not copied) and re-adds every other
  added token in id order — what diffusers' unload does through JSON, without the JSON.

The result is the same vocabulary, ids and rows diffusers' loader gives (tests compare them).
"""

from __future__ import annotations

import torch

from .errors import SubjectgenError

SPARE_ROWS = 256
_BUFFER_ATTR = "_subjectgen_row_buffer"


def token_taken(tokenizer, token: str) -> bool:
    """Whether ``token`` is already one token of the vocabulary (base or added), without building the vocab dict."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None:
        return backend.token_to_id(token) is not None
    return token in tokenizer.get_vocab()


def _set_rows(text_encoder, rows: int) -> torch.Tensor:
    """Make the input embedding ``rows`` long (a view of the row buffer); return the buffer."""
    embedding = text_encoder.get_input_embeddings()
    weight = embedding.weight
    buffer = getattr(embedding, _BUFFER_ATTR, None)
    is_view = (buffer is not None and weight.data_ptr() == buffer.data_ptr() and weight.dtype == buffer.dtype
               and weight.device == buffer.device)
    if not is_view or rows > buffer.shape[0]:
        current = weight.shape[0]
        buffer = torch.empty(max(rows, current) + SPARE_ROWS, weight.shape[1], dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            buffer[: min(current, rows)].copy_(weight[: min(current, rows)])
        object.__setattr__(embedding, _BUFFER_ATTR, buffer)
    embedding.weight = torch.nn.Parameter(buffer[:rows], requires_grad=weight.requires_grad)
    embedding.num_embeddings = rows
    text_encoder.config.vocab_size = rows
    return buffer


def add_tokens(tokenizer, text_encoder, tokens: list[str], vectors: torch.Tensor) -> list[int]:
    """Add ``tokens`` (new words) with ``vectors`` as their input-embedding rows; return their ids."""
    if len(tokens) != vectors.shape[0]:
        raise SubjectgenError(f"{len(tokens)} tokens but {vectors.shape[0]} vectors.")
    added = tokenizer.add_tokens(tokens)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if added != len(tokens) or ids != list(range(ids[0], ids[0] + len(tokens))):
        remove_tokens(tokenizer, text_encoder, [t for t in tokens if token_taken(tokenizer, t)])
        raise SubjectgenError(f"could not add the tokens {tokens} as new consecutive words of the tokenizer.")
    rows = max(len(tokenizer), text_encoder.get_input_embeddings().num_embeddings)
    buffer = _set_rows(text_encoder, rows)
    with torch.no_grad():
        buffer[ids[0] : ids[0] + len(ids)].copy_(vectors.to(buffer.dtype))
    return ids


def remove_tokens(tokenizer, text_encoder, tokens: list[str]) -> None:
    """Remove added ``tokens`` and their rows; later added tokens move down to keep the ids contiguous."""
    backend = tokenizer._tokenizer
    decoder = backend.get_added_tokens_decoder()
    removed = {token_id for token_id, added in decoder.items() if added.content in set(tokens) and not added.special}
    if not removed:
        return
    embedding = text_encoder.get_input_embeddings()
    rows = embedding.num_embeddings
    removed_rows = {i for i in removed if i < rows}  # a token whose row was never added (a failed load) has none
    if removed_rows:
        keep = [i for i in range(min(removed_rows), rows) if i not in removed_rows]
        with torch.no_grad():
            if keep:
                start = min(removed_rows)
                embedding.weight[start : start + len(keep)] = embedding.weight[keep].clone()
    _rebuild_tokenizer(tokenizer, [decoder[i] for i in sorted(decoder) if i not in removed])
    if removed_rows:
        _set_rows(text_encoder, rows - len(removed_rows))


def _rebuild_tokenizer(tokenizer, added_tokens) -> None:
    """A Rust tokenizer sharing the current one's pipeline objects, with exactly ``added_tokens`` in this order."""
    from tokenizers import Tokenizer

    old = tokenizer._tokenizer
    new = Tokenizer(old.model)
    new.normalizer, new.pre_tokenizer = old.normalizer, old.pre_tokenizer
    new.post_processor, new.decoder = old.post_processor, old.decoder
    for added in added_tokens:
        (new.add_special_tokens if added.special else new.add_tokens)([added])
    if old.truncation:
        new.enable_truncation(**old.truncation)
    if old.padding:
        new.enable_padding(**old.padding)
    new.encode_special_tokens = old.encode_special_tokens
    tokenizer._tokenizer = new
