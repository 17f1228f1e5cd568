"""subjectgen compress: low-rank factors that the loader applies as up (down x), with clear errors on bad input."""

from __future__ import annotations

import json

import pytest
import torch
from _plugin_fixtures import make_subject, patch_weights, unet_out
from _cli import run_cli

from subjectgen_diffusers import SubjectgenError, load_subject, set_subject_scale
from subjectgen_diffusers.compress import COMPRESS_REPORT, compress_subject, rank_for_energy
from subjectgen_diffusers.subject_format import LowRankDelta, Subject
from subjectgen_training.models.tiny_models import build_tiny_sd_pipeline


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    pipe = build_tiny_sd_pipeline(seed=0)
    return make_subject(pipe, "<s1>", scope="kv+q+out", seed=6, magnitude=0.05).save(tmp_path_factory.mktemp("c") / "s")


def test_compressed_subject_is_its_truncated_svd_applied_exactly(tmp_path, full):
    out = compress_subject(full, tmp_path / "r2", rank=2)
    report = json.loads((out / COMPRESS_REPORT).read_text())
    assert {entry["rank"] for entry in report["layers"].values()} == {2}
    assert (out / "subject.safetensors").stat().st_size < (full / "subject.safetensors").stat().st_size / 4
    original, dense = Subject.load(full), Subject.load(out)
    assert isinstance(Subject.load(out, low_rank=True).deltas[original.config.layers[0]]["to_k"], LowRankDelta)
    for layer, projs in original.deltas.items():
        for proj, delta in projs.items():
            svals = torch.linalg.svdvals(delta.double())
            best = float(svals[2:].square().sum().sqrt() / svals.square().sum().sqrt())  # Eckart–Young optimum
            error = float(torch.linalg.matrix_norm(delta - dense.deltas[layer][proj]) / torch.linalg.matrix_norm(delta))
            assert abs(error - best) < 1e-5 and abs(report["layers"][f"{layer}.{proj}"]["relative_error"] - best) < 1e-5

    pipe, reference = build_tiny_sd_pipeline(seed=0), build_tiny_sd_pipeline(seed=0)
    load_subject(pipe, out)  # factored: the processor adds up (down x)
    patch_weights(reference, dense)
    reference.load_textual_inversion(dense.token_embeddings, token="<s1>")
    torch.testing.assert_close(unet_out(pipe, "a <s1>"), unet_out(reference, "a <s1>"), atol=1e-5, rtol=1e-4)
    set_subject_scale(pipe, "<s1>", 0.0)
    assert torch.equal(unet_out(pipe, "a cat"), unet_out(build_tiny_sd_pipeline(seed=0), "a cat"))


def test_energy_one_keeps_everything_and_energy_picks_the_smallest_rank(tmp_path, full):
    out = compress_subject(full, tmp_path / "e1", energy=1.0)
    assert json.loads((out / COMPRESS_REPORT).read_text())["max_relative_error"] < 1e-6
    s = torch.tensor([3.0, 2.0, 1.0])  # squared: 9, 4, 1 of 14 -> cumulative 0.643, 0.929, 1
    assert [rank_for_energy(s, e) for e in (0.5, 0.643, 0.65, 0.93, 1.0)] == [1, 2, 2, 3, 3]
    assert rank_for_energy(torch.zeros(3), 0.9) == 1


def test_bad_input_gives_clear_errors(tmp_path, full):
    with pytest.raises(SubjectgenError, match=r"--rank 33 is larger than the delta"):
        compress_subject(full, tmp_path / "a", rank=33)
    for energy in (0.0, 1.01, -1.0):
        with pytest.raises(SubjectgenError, match=r"--energy must lie in \(0, 1\]"):
            compress_subject(full, tmp_path / "b", energy=energy)
    with pytest.raises(SubjectgenError, match="either a rank"):
        compress_subject(full, tmp_path / "c", rank=2, energy=0.5)
    with pytest.raises(SubjectgenError, match="needs --rank R or --energy E"):
        compress_subject(full, tmp_path / "d")
    with pytest.raises(SubjectgenError, match="already exists"):
        compress_subject(full, full.parent, rank=2)
    token_only = make_subject(build_tiny_sd_pipeline(seed=0), "<s2>", scope=None).save(tmp_path / "cr")
    with pytest.raises(SubjectgenError, match="no weight deltas"):
        compress_subject(token_only, tmp_path / "e", rank=2)
    assert not any((tmp_path / name).exists() for name in "abcde")


@pytest.mark.slow
def test_compress_cli(tmp_path, full):
    done = run_cli("compress", str(full), "--out", str(tmp_path / "r4"), "--rank", "4", "--dtype", "float16")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rank 4-4" in done.stdout and (tmp_path / "r4" / COMPRESS_REPORT).is_file()
    assert json.loads((tmp_path / "r4" / "subject_config.json").read_text())["delta_rank"] == 4
    refused = run_cli("compress", str(full), "--out", str(tmp_path / "r4"), "--rank", "4")
    assert refused.returncode == 2 and "error:" in refused.stderr and "already exists" in refused.stderr
    missing = run_cli("compress", str(full), "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and "one of the arguments --rank --energy is required" in missing.stderr


@pytest.mark.slow
def test_train_save_rank_stores_the_truncation_of_what_it_trained(tmp_path, tiny_sd_dir, astronaut_image):
    """`train --save-rank R` writes the same subject as training exactly and compressing afterwards, and a method
    without deltas refuses the flag before anything loads."""
    from subjectgen_training.trainer.config import TrainConfig, TrainConfigError
    from subjectgen_training.trainer.loop import Trainer

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, box in enumerate([(0, 0, 400, 400), (60, 0, 460, 400), (0, 40, 420, 460)]):
        astronaut_image.crop(box).save(photos / f"photo{i}.png")
    settings = dict(base=str(tiny_sd_dir), photos=str(photos), method="cd", resolution=64, batch_size=1, steps=2,
                    lr=1e-3, token_lr=1e-3, scale_lr=False, seed=0)
    Trainer(TrainConfig.from_dict({**settings, "out": str(tmp_path / "exact")})).run()
    Trainer(TrainConfig.from_dict({**settings, "out": str(tmp_path / "r2"), "save_rank": 2})).run()
    assert json.loads((tmp_path / "r2" / "subject_config.json").read_text())["delta_rank"] == 2
    assert (tmp_path / "r2" / COMPRESS_REPORT).is_file()
    afterwards = Subject.load(compress_subject(tmp_path / "exact", tmp_path / "later", rank=2))
    trained = Subject.load(tmp_path / "r2")
    for layer, projs in afterwards.deltas.items():
        for proj, delta in projs.items():
            torch.testing.assert_close(trained.deltas[layer][proj], delta, atol=1e-6, rtol=1e-5)
    with pytest.raises(TrainConfigError, match="drop --save-rank"):
        TrainConfig.from_dict({**settings, "method": "cr", "out": str(tmp_path / "cr"), "save_rank": 2})
