"""Checkpoints: a `subjectgen train` process killed (SIGKILL) mid-run and run again with --resume ends with exactly
the subject of an uninterrupted run, every tensor of it."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from _cli import run_cli, signal_when
from safetensors.torch import load_file

from subjectgen_diffusers.subject_format import Subject
from subjectgen_training.trainer.checkpoints import checkpoint_dir, list_checkpoints
from subjectgen_training.trainer.config import TrainConfig
from subjectgen_training.trainer.loop import train


def _kill_and_resume(tmp_path, tiny_sd_dir, photo_dir, reg_dir, *flags, steps: int, kill_at: int):
    """Train ``steps`` straight, then again killed (SIGKILL) while writing the checkpoint of step ``kill_at`` and
    resumed; the two subjects must be equal bit for bit. Returns the straight run's folder."""
    def command(out):
        return ["train", "--base", str(tiny_sd_dir), "--photos", str(photo_dir), "--reg-dir", str(reg_dir),
                "--method", "cd+cr", "--out", str(out), "--resolution", "64", "--batch-size", "2", "--steps", str(steps),
                "--checkpoint-every", "2", "--checkpoints-total-limit", "2", *flags]

    one_thread = {"OMP_NUM_THREADS": "1"}  # the same thread count in every run, so the float sums are the same
    straight = tmp_path / "straight"
    done = run_cli(*command(straight), env=one_thread)
    assert done.returncode == 0, done.stderr[-3000:]

    # Killed while writing the checkpoint of step kill_at: the probe holds the process inside the torch.save of its
    # optimizer state, the test sees that file appear and sends SIGKILL. The half-written one must not count.
    out = tmp_path / "killed"
    checkpoints = checkpoint_dir(out)  # <out>.checkpoints/, beside the subject folder
    name = f"step-{kill_at:07d}"
    killed = signal_when(command(out), lambda: any(checkpoints.glob(f"*{name}*/optimizer.pt")),
                         probes={"pause_when": {"torch_save_under": name}}, env=one_thread)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    expected = [f"step-{s:07d}" for s in range(2, kill_at, 2)][-2:]  # the last K=2 complete ones
    assert [p.name for p in list_checkpoints(out)] == expected
    assert not (out / "subject.safetensors").exists()

    resumed = run_cli(*command(out), "--resume", env=one_thread)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "train_summary.json").read_text())["resumed_from"] == kill_at - 2  # not the half-written

    a, b = load_file(straight / "subject.safetensors"), load_file(out / "subject.safetensors")
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bit for bit: the same steps from the same state
    assert json.loads((straight / "subject_config.json").read_text()) == json.loads((out / "subject_config.json").read_text())

    # Every kind of tensor is there, and trained: the comparison above is not vacuous.
    subject = Subject.load(straight)
    assert subject.config.cd_scope == "kv+q+out" and subject.token_embeddings.shape[0] == 2
    assert set(subject.bias_deltas) == set(subject.deltas) and subject.bias_deltas
    for layer, deltas in subject.deltas.items():
        assert set(deltas) == {"to_q", "to_k", "to_v", "to_out.0"}
        assert all(d.abs().max() > 0 for d in deltas.values()), layer
        assert subject.bias_deltas[layer].abs().max() > 0, layer
    return straight


@pytest.mark.slow
@pytest.mark.long
def test_killed_run_with_gradient_accumulation_resumed_equals_uninterrupted(tiny_sd_dir, photo_dir, reg_dir, tmp_path):
    """cd+cr with its default scope kv+q+out (token rows, K/V/Q/out weight deltas and the out-projection bias deltas),
    two batches per optimizer step (two GPUs' global batch on one): checkpoints fall between optimizer steps, and a run
    killed mid-checkpoint resumes exactly. (Accumulation 1 is the same path with one batch per step: no separate run.)
    The seed's rate: 5e-6 x 2 accumulation x 2 batch x 2 prior = 4e-5."""
    straight = _kill_and_resume(tmp_path, tiny_sd_dir, photo_dir, reg_dir, "--gradient-accumulation-steps", "2",
                                "--lr", "5e-6", steps=6, kill_at=4)
    saved = json.loads((straight / "train_config.json").read_text())
    assert saved["gradient_accumulation_steps"] == 2 and saved["effective_lr"] == pytest.approx(4e-5)


def test_resume_without_checkpoints_starts_from_zero(tiny_sd_dir, photo_dir, tmp_path):
    steps = []
    config = TrainConfig.from_dict(dict(base=str(tiny_sd_dir), photos=str(photo_dir), method="cr", out=str(tmp_path / "o"),
                                        resolution=64, batch_size=1, steps=2, resume=True))
    train(config, on_step=lambda s, _: steps.append(s))
    assert steps == [1, 2] and (tmp_path / "o" / "subject.safetensors").is_file()
