"""The Stable Diffusion 1.x CLIP tokenizer, built offline from the byte-pair vocabulary shipped in this package.

Used by tests, the tiny built-in models and anyone without Hub access. The vocabulary layout follows OpenAI CLIP's
``simple_tokenizer``: 256 byte characters, the same with ``</w>``, one entry per merge, then the two special tokens.
"""

from __future__ import annotations

import gzip
from importlib import resources

from transformers import CLIPTokenizer

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 48894  # 49408 tokens - 2 * 256 byte tokens - 2 special tokens
MODEL_MAX_LENGTH = 77


def _bytes_to_unicode() -> list[str]:
    """CLIP's reversible byte -> printable-unicode table, in CLIP's order."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Return the vocabulary (token -> id) and merge list read from the packaged vocabulary file."""
    raw = resources.files("subjectgen_diffusers.data").joinpath(VOCAB_FILE).read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    byte_chars = _bytes_to_unicode()
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges  # type: ignore[return-value]


def build_clip_tokenizer() -> CLIPTokenizer:
    """A ``CLIPTokenizer`` identical in behaviour to Stable Diffusion 1.5's, built without network access."""
    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MODEL_MAX_LENGTH)
