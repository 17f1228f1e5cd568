"""The per-reader table of `subjectgen export --format lora` (issue 23): which file each reader takes, what it applies,
and the share of the subject's effect on the noise prediction that a reader without bias deltas leaves out."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from _plugin_fixtures import make_subject
from _cli import run_cli
from diffusers import StableDiffusionPipeline

from subjectgen_diffusers.export_readers import READERS, bias_effect_share
from subjectgen_diffusers.lora_export import EXPORT_REPORT

READER_NAMES = ["A1111", "Forge", "ComfyUI", "sd-scripts", "InvokeAI", "diffusers"]
WITHOUT_BIAS = {"A1111", "sd-scripts", "InvokeAI"}


def test_the_share_is_0_without_bias_deltas_and_1_with_only_bias_deltas(tiny_sd_dir):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    subject = make_subject(pipe, "<s1>", scope="kv+q+out", seed=3, magnitude=0.1)
    share = bias_effect_share(pipe, subject)
    assert 0.0 < share < 1.0
    zero_bias = {layer: torch.zeros_like(b) for layer, b in subject.bias_deltas.items()}
    assert bias_effect_share(pipe, dataclasses.replace(subject, bias_deltas=zero_bias)) == 0.0
    zero_weights = {layer: {p: torch.zeros_like(d) for p, d in projs.items()} for layer, projs in subject.deltas.items()}
    assert bias_effect_share(pipe, dataclasses.replace(subject, deltas=zero_weights)) == pytest.approx(1.0)
    # the pipeline is left without a subject: the base's output is back
    assert len(pipe.tokenizer) == 49408


@pytest.mark.slow
def test_export_prints_and_writes_the_reader_table(tmp_path, tiny_sd_dir):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    subject = make_subject(pipe, "<s1>", scope="kv+q+out", seed=1, magnitude=0.1)
    folder = subject.save(tmp_path / "subject")
    done = run_cli("export", str(folder), "--format", "lora", "--out", str(tmp_path / "lora"), "--base", str(tiny_sd_dir))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "lora" / EXPORT_REPORT).read_text())["readers"]
    assert [row["reader"] for row in rows] == READER_NAMES == [r.name for r in READERS]
    share = bias_effect_share(pipe, subject)
    for row in rows:
        assert row["files"] and all((tmp_path / "lora" / name).is_file() for name in row["files"])
        assert row["dropped_share"] == (pytest.approx(share) if row["reader"] in WITHOUT_BIAS else 0.0), row["reader"]
        assert f"{row['reader']:<12}" in done.stdout
    assert f"{share:.1%}" in done.stdout and rows[2]["files"] == ["s1_lora.safetensors", "s1.safetensors"]



def test_without_bias_deltas_no_reader_drops_anything(tmp_path, tiny_pipe):
    """A subject trained with a frozen bias (or scope kv), and a token-only subject: every row says nothing is lost."""
    from subjectgen_diffusers.export_readers import reader_table
    from subjectgen_diffusers.lora_export import export_lora

    subject = make_subject(tiny_pipe, "<s1>", scope="kv+q+out", seed=1)
    no_bias = dataclasses.replace(subject, bias_deltas={})
    rows = reader_table(no_bias, export_lora(no_bias, tmp_path / "a"), None)
    assert [row["reader"] for row in rows] == READER_NAMES
    assert all(row["drops"] == "nothing" and row["dropped_share"] == 0.0 for row in rows)
    with_bias = reader_table(subject, export_lora(subject, tmp_path / "b"), None)  # no base given: not measured
    assert [row["dropped_share"] for row in with_bias if row["reader"] in WITHOUT_BIAS] == [None] * 3
    token_only = make_subject(tiny_pipe, "<s2>", scope=None)
    rows = reader_table(token_only, export_lora(token_only, tmp_path / "c"), None)
    assert all(row["files"] == ["s2.safetensors"] and row["drops"] == "nothing" for row in rows)
