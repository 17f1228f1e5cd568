"""The offline tokenizer, tiny models and subject file format that everything else builds on."""

import json

import pytest
import torch

from subjectgen_diffusers.subject_format import Subject, SubjectConfig, SubjectFormatError, low_rank_factors
from subjectgen_diffusers.tokenizer import build_clip_tokenizer


def test_offline_tokenizer_matches_sd15():
    tokenizer = build_clip_tokenizer()
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a person").input_ids == [49406, 320, 1125, 539, 320, 2533, 49407]
    assert tokenizer.model_max_length == 77
    assert tokenizer.pad_token_id == 49407


def test_tiny_pipeline_roundtrips_through_disk(tiny_sd_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, safety_checker=None, requires_safety_checker=False)
    assert pipe.tokenizer("a photo of a person").input_ids[1] == 320
    image = pipe("a photo", num_inference_steps=2, height=64, width=64, output_type="np").images[0]
    assert image.shape == (64, 64, 3)


def _cd_subject(rank=None):
    config = SubjectConfig(method="cd", token="<s1>", num_vectors=1, text_hidden_size=4, cross_attention_dim=4,
                           layers=["a.attn2"], cd_scope="kv")
    torch.manual_seed(0)
    deltas = {"a.attn2": {"to_k": torch.randn(6, 4), "to_v": torch.randn(6, 4)}}
    return Subject(config, torch.randn(1, 4), deltas)


def test_subject_save_load_roundtrip(tmp_path):
    subject = _cd_subject()
    subject.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"subject_config.json", "subject.safetensors"}
    loaded = Subject.load(tmp_path)
    assert loaded.config == subject.config
    torch.testing.assert_close(loaded.deltas["a.attn2"]["to_k"], subject.deltas["a.attn2"]["to_k"], rtol=0, atol=0)
    torch.testing.assert_close(loaded.token_embeddings, subject.token_embeddings, rtol=0, atol=0)


def test_low_rank_factors_are_exact_at_full_rank(tmp_path):
    subject = _cd_subject()
    subject.save(tmp_path, rank=4)
    loaded = Subject.load(tmp_path)
    assert loaded.config.delta_rank == 4
    torch.testing.assert_close(loaded.deltas["a.attn2"]["to_v"], subject.deltas["a.attn2"]["to_v"], atol=1e-5, rtol=1e-5)
    # the factors stored in the file (read with safetensors, not through Subject.load) rebuild each matrix
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "subject.safetensors"))
    assert not any(key.endswith(".delta") for key in stored)  # only factors were written
    for proj in ("to_k", "to_v"):
        up, down = stored[f"a.attn2.{proj}.delta_up"], stored[f"a.attn2.{proj}.delta_down"]
        assert up.shape == (6, 4) and down.shape == (4, 4)
        torch.testing.assert_close(up @ down, subject.deltas["a.attn2"][proj], atol=1e-5, rtol=1e-5)


def test_low_rank_factors_are_the_best_truncation():
    """A matrix built with known singular vectors and values: rank-r factors must rebuild exactly its top-r part
    (Eckart-Young), so the error is the dropped singular values and nothing else."""
    generator = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(12, 5, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(9, 5, generator=generator, dtype=torch.float64))
    values = torch.tensor([5.0, 3.0, 2.0, 0.5, 0.1], dtype=torch.float64)
    matrix = (u * values) @ v.T
    for rank in (1, 2, 5):
        up, down = low_rank_factors(matrix.float(), rank)
        assert up.shape == (12, rank) and down.shape == (rank, 9)
        expected = (u[:, :rank] * values[:rank]) @ v[:, :rank].T
        torch.testing.assert_close(up.double() @ down.double(), expected, atol=1e-5, rtol=1e-5)
        error = torch.linalg.matrix_norm(matrix - up.double() @ down.double())
        assert error.item() == pytest.approx(values[rank:].square().sum().sqrt().item(), abs=1e-5)
    up, down = low_rank_factors(torch.outer(torch.arange(3.0), torch.arange(5.0)), 1)  # a rank-1 matrix: exact
    torch.testing.assert_close(up @ down, torch.outer(torch.arange(3.0), torch.arange(5.0)), atol=1e-5, rtol=1e-5)
    up, down = low_rank_factors(matrix.float(), 20)  # more than the matrix has: every direction, still exact
    assert up.shape == (12, 9) and down.shape == (9, 9)
    torch.testing.assert_close(up.double() @ down.double(), matrix, atol=1e-5, rtol=1e-5)


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    _cd_subject().save(tmp_path)
    data = json.loads((tmp_path / "subject_config.json").read_text())
    data["tokn"] = "x"
    (tmp_path / "subject_config.json").write_text(json.dumps(data))
    with pytest.raises(SubjectFormatError, match="unknown keys \\['tokn'\\]"):
        Subject.load(tmp_path)
    with pytest.raises(SubjectFormatError, match="method must be one of"):
        SubjectConfig(method="lora", token="<s>", num_vectors=1, text_hidden_size=4)
    with pytest.raises(SubjectFormatError, match="missing"):
        Subject.load(tmp_path / "nowhere")
