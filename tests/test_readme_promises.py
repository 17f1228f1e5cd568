"""README promises that had no test of their own: each test names the sentence it guards."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _cli import cli_env, run_cli
from _plugin_fixtures import make_subject

# What only an extra installs (test_wheel.py blocks the same modules): a "plain install" cannot import them.
EXTRAS_ONLY = ("accelerate", "peft", "gradio", "dlib", "face_recognition_models", "skimage", "matplotlib")


def two_person_subject(pipe, folder: Path) -> Path:
    """A subject holding two people (as `subjectgen merge` and joint training write them)."""
    from subjectgen_diffusers.subject_format import Subject

    one = make_subject(pipe, "<ada>")
    other = make_subject(pipe, "<bob>", seed=1)
    config = dataclasses.replace(one.config, extra_tokens={"<bob>": other.config.num_vectors})
    both = Subject(config, torch.cat([one.token_embeddings, other.token_embeddings]), one.deltas)
    return both.save(folder)


@pytest.mark.slow
def test_a_merged_or_joint_subject_is_refused_by_format_a1111(tiny_pipe, tmp_path):
    """README: "an A1111 embedding holds one token, so `--format a1111` refuses it" (with or without --token-only)."""
    folder = two_person_subject(tiny_pipe, tmp_path / "ada+bob")
    for extra in ([], ["--token-only"]):
        out = tmp_path / "ada.safetensors"
        result = run_cli("export", str(folder), "--format", "a1111", "--out", str(out), *extra, timeout=300,
                         probes={"forbid_model_loads": True})
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: an A1111 embedding holds one token, and this subject holds 2 (<ada>, <bob>)")
        assert "--format lora" in last and not out.exists()


def test_lr_with_method_cr_warns_that_it_is_unused(caplog):
    """README: "`--lr` with `--method cr` is unused (a warning says so)"; without --lr, no warning."""
    from subjectgen_training.trainer.config import TrainConfig

    base = {"base": "b", "photos": "p", "out": "o", "method": "cr"}
    with caplog.at_level(logging.WARNING):
        TrainConfig.from_dict(base).resolved()
    assert not [r for r in caplog.records if "unused" in r.getMessage()]
    with caplog.at_level(logging.WARNING):
        resolved = TrainConfig.from_dict({**base, "lr": 1e-3}).resolved()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("lr 0.001 is the weight-delta rate; method cr trains only token rows, so it is unused" in w
               for w in warnings), warnings
    assert resolved.effective_rates(1).lr is None  # and indeed no weight-delta rate is used


@pytest.mark.slow
def test_evaluate_face_model_none_runs_on_the_plain_install(tiny_sd_dir, tmp_path, astronaut_image):
    """README's extras table: `evaluate --face-model toy|none` needs no extra. Run with every extra's modules
    unimportable, as on `pip install subjectgen-diffusers`."""
    from subjectgen_training.sampling.generate import GenerateConfig, generate_images

    images = generate_images(GenerateConfig(base=str(tiny_sd_dir), prompts="a photo of {}", out=str(tmp_path / "images"),
                                            num_per_prompt=2, steps=2, seed=0))
    reference = tmp_path / "reference"
    reference.mkdir()
    astronaut_image.resize((64, 64)).save(reference / "a.png")
    out = tmp_path / "results.json"
    args = ["evaluate", "--images", str(images), "--reference", str(reference), "--out", str(out),
            "--face-model", "none", "--prompt-scorer", "none"]
    code = (f"import sys\nfor name in {EXTRAS_ONLY!r}:\n    sys.modules[name] = None\n"
            "from subjectgen_training.cli import main\n"
            f"code = main({args!r})\n"
            f"assert not [m for m in {EXTRAS_ONLY!r} if sys.modules.get(m) is not None]\n"
            "sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert len(results["images"]) == 2 and all(r["identity"] is None for r in results["images"])
    assert results["protocol"] == "identity not computed (--face-model none)"


@pytest.mark.parametrize("flags, host, share", [
    ([], "127.0.0.1", False),
    (["--host", "0.0.0.0", "--share"], "0.0.0.0", True),
])
def test_ui_host_and_share_reach_gradio_and_nothing_is_shared_unless_told(tmp_path, monkeypatch, flags, host, share):
    """README: "it listens on 127.0.0.1 and shares nothing unless told (`--host`, `--share`)": the real command's
    flags arrive at Gradio's own launch() (an autospec: a renamed parameter would raise), neither dropped nor added."""
    gradio = pytest.importorskip("gradio")
    from unittest import mock

    from subjectgen_training.cli import main

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-tmp"))  # launch() moves it into the work folder
    with mock.patch.object(gradio.Blocks, "launch", autospec=True) as launch:
        assert main(["--threads", "1", "ui", "--workdir", str(tmp_path / "work"), "--port", "7999", *flags]) == 0
    launch.assert_called_once()
    kwargs = launch.call_args.kwargs
    assert (kwargs["server_name"], kwargs["server_port"], kwargs["share"]) == (host, 7999, share)
    assert kwargs["allowed_paths"] == [str((tmp_path / "work").resolve())]


@pytest.mark.slow
def test_load_subject_into_a_float16_pipeline_as_the_python_example(tiny_sd_dir, tiny_pipe, tmp_path):
    """README's Python API: `from_pretrained(..., torch_dtype=torch.float16)`, load_subject, draw, set_subject_scale,
    unload_subject "back to the base model's output, exactly" -- on the CPU, where torch runs these ops in float16."""
    from diffusers import StableDiffusionPipeline

    from subjectgen_diffusers import load_subject, set_subject_scale, unload_subject
    from subjectgen_diffusers.attention import SubjectAttnProcessor

    folder = make_subject(tiny_pipe, "<alice>", scope="kv+q+out", magnitude=0.2).save(tmp_path / "alice")
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, torch_dtype=torch.float16, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def draw(prompt):
        return pipe(prompt, num_inference_steps=2, height=64, width=64, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images

    prompt = "a photo of <alice> person climbing a mountain"
    before = draw(prompt.replace("<alice>", "a"))
    token = load_subject(pipe, folder)
    assert token == "<alice>"
    # every part the subject touches stays in the pipeline's dtype: the token rows and each delta
    embedding = pipe.text_encoder.get_input_embeddings()
    ids = pipe.tokenizer(pipe.maybe_convert_prompt(token, pipe.tokenizer), add_special_tokens=False).input_ids
    assert embedding(torch.tensor(ids)).dtype == torch.float16
    processors = [p for p in pipe.unet.attn_processors.values() if isinstance(p, SubjectAttnProcessor)]
    assert processors
    learned = draw(prompt)
    assert torch.isfinite(learned).all()
    applied = [v for p in processors for v in p._cache.values() if isinstance(v, torch.Tensor)]  # the summed deltas
    assert applied and all(v.dtype == torch.float16 for v in applied)
    assert (learned - draw(prompt.replace("<alice>", "a"))).abs().max() > 0  # the deltas act on other words too
    set_subject_scale(pipe, token, 0.0)
    half = draw(prompt)
    assert not torch.equal(half, learned)
    unload_subject(pipe)
    assert torch.equal(draw(prompt.replace("<alice>", "a")), before)
    assert all(p.__class__.__module__.startswith("diffusers") for p in pipe.unet.attn_processors.values())
