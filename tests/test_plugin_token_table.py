"""The fast token table gives what diffusers' textual-inversion loader gives: same ids, rows, prompts; exact unload."""

from __future__ import annotations

import torch
from _plugin_fixtures import encode, make_subject

from subjectgen_diffusers import load_subject, unload_subject
from subjectgen_diffusers.token_table import SPARE_ROWS, token_taken
from subjectgen_training.models.tiny_models import build_tiny_sd_pipeline


def _vectors(seed: int, rows: int = 2) -> torch.Tensor:
    return torch.randn(rows, 32, generator=torch.Generator().manual_seed(seed))


def test_load_and_unload_match_diffusers_textual_inversion():
    ours, stock = build_tiny_sd_pipeline(seed=0), build_tiny_sd_pipeline(seed=0)
    subjects = {name: make_subject(ours, name, scope=None, vectors=_vectors(i, rows=i + 1))
                for i, name in enumerate(["<a>", "<b>", "<c>"])}
    for name, subject in subjects.items():
        load_subject(ours, subject)
        stock.load_textual_inversion(subject.token_embeddings, token=name)
    prompt = "a <a> and a <b> meet <c>"
    assert ours.tokenizer.get_vocab() == stock.tokenizer.get_vocab()
    assert ours.maybe_convert_prompt(prompt, ours.tokenizer) == stock.maybe_convert_prompt(prompt, stock.tokenizer)
    assert torch.equal(encode(ours, prompt), encode(stock, prompt))
    rows = stock.text_encoder.get_input_embeddings().num_embeddings
    assert ours.text_encoder.get_input_embeddings().weight.shape[0] == rows == ours.text_encoder.config.vocab_size

    unload_subject(ours, "<b>")  # from the middle: <c>'s ids and rows move down, as in diffusers' unload
    stock.unload_textual_inversion(["<b>", "<b>_1"])
    assert ours.tokenizer.get_vocab() == stock.tokenizer.get_vocab()
    assert not token_taken(ours.tokenizer, "<b>") and token_taken(ours.tokenizer, "<c>_2")
    assert torch.equal(ours.text_encoder.get_input_embeddings().weight,
                       stock.text_encoder.get_input_embeddings().weight)
    assert torch.equal(encode(ours, "a <a> and <c>"), encode(stock, "a <a> and <c>"))


def test_rows_are_a_view_of_one_buffer_and_unload_restores_the_table():
    pipe = build_tiny_sd_pipeline(seed=0)
    embedding = pipe.text_encoder.get_input_embeddings()
    table = embedding.weight.detach().clone()
    load_subject(pipe, make_subject(pipe, "<a>", scope=None, vectors=_vectors(1)))
    buffer_ptr = pipe.text_encoder.get_input_embeddings().weight.data_ptr()
    unload_subject(pipe)
    load_subject(pipe, make_subject(pipe, "<b>", scope=None, vectors=_vectors(2)))
    weight = pipe.text_encoder.get_input_embeddings().weight
    assert weight.data_ptr() == buffer_ptr  # the second load re-slices the buffer, no table copy
    assert weight.shape[0] == table.shape[0] + 2 < table.shape[0] + SPARE_ROWS
    unload_subject(pipe)
    restored = pipe.text_encoder.get_input_embeddings()
    assert torch.equal(restored.weight, table) and restored.num_embeddings == table.shape[0]


def test_swapping_subjects_on_one_pipeline_equals_a_fresh_load(tmp_path):
    """Unload A, load B on the same pipeline (no reload): the output is a fresh pipeline's with only B."""
    from _plugin_fixtures import unet_out

    from subjectgen_diffusers.compress import compress_subject
    from subjectgen_training.benchmarks.plugin_bench import load_times

    pipe = build_tiny_sd_pipeline(seed=0)
    a = make_subject(pipe, "<a>", scope="kv+q+out", seed=1).save(tmp_path / "a")
    b = compress_subject(make_subject(pipe, "<b>", scope="kv", seed=2).save(tmp_path / "b-full"), tmp_path / "b", rank=3)
    load_subject(pipe, a)
    unload_subject(pipe, "<a>")
    load_subject(pipe, b)
    fresh = build_tiny_sd_pipeline(seed=0)
    load_subject(fresh, b)
    assert torch.equal(unet_out(pipe, "a <b>"), unet_out(fresh, "a <b>"))
    unload_subject(pipe)
    timings = load_times(pipe, 1, rank=2)  # the benchmark's own loop leaves the pipeline as it found it
    assert set(timings) >= {"full_load_ms", "rank2_load_ms", "swap_full_and_compressed_ms"}
    assert not token_taken(pipe.tokenizer, "<s1>") and not token_taken(pipe.tokenizer, "<s2>")
