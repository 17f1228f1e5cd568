"""Training on SDXL through the model-family seam, on a tiny SDXL built offline: `subjectgen train` with each method
in a real subprocess, the subject loaded into a stock StableDiffusionXLPipeline (image changed, exact unload), kill +
--resume bit for bit, Cross Initialization's start in each encoder against a hand-written pass, the trainer's UNet
conditioning against the pipeline's own, and the shipped SDXL experiment config."""

from __future__ import annotations

import ast
import json
import signal

import numpy as np
import pytest
import torch
from _cli import REPO_ROOT, run_cli, signal_when
from safetensors.torch import load_file

from subjectgen_diffusers.families import SDXL
from subjectgen_diffusers.subject_format import Subject
from subjectgen_training.trainer.checkpoints import checkpoint_dir, list_checkpoints
from subjectgen_training.methods.cross_init import read_celeb_names
from subjectgen_training.trainer.config import TrainConfig
from subjectgen_training.trainer.loop import Trainer

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # the same thread count in every run, so the float sums are the same


def _image(pipe, prompt: str) -> np.ndarray:
    return pipe(prompt, num_inference_steps=2, height=64, width=64, guidance_scale=5.0, output_type="np",
                generator=torch.Generator().manual_seed(0)).images[0]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cd", "cr", "cd+cr"])
def test_cli_trains_on_tiny_sdxl_and_the_subject_changes_the_image_and_unloads_exactly(
        tiny_sdxl_dir, photo_dir, reg_dir, tmp_path, method):
    from diffusers import StableDiffusionXLPipeline

    from subjectgen_diffusers import load_subject, unload_subject

    out = tmp_path / "subject"
    result = run_cli("train", "--base", str(tiny_sdxl_dir), "--photos", str(photo_dir), "--reg-dir", str(reg_dir),
                     "--method", method, "--out", str(out), "--resolution", "64", "--batch-size", "1", "--steps", "3",
                     "--token", "<ada>", "--token-lr", "1e-2", *([] if method == "cr" else ["--lr", "1e-3"]),
                     env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]

    subject = Subject.load(out)
    config = subject.config
    vectors = 1 if method == "cd" else 2
    assert config.family == "sdxl" and config.method == method and config.token == "<ada>"
    assert config.extra_encoders == {"text_encoder_2": 48}  # the tiny SDXL's encoder widths: 32 and 48
    assert subject.token_embeddings.shape == (vectors, 32)
    assert subject.extra_tables["text_encoder_2"].shape == (vectors, 48)
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
    pipe.set_progress_bar_config(disable=True)
    if method == "cr":
        assert not subject.deltas
    else:  # the deltas of every cross-attention layer SDXL's family names, K/V/Q/out (the recipe's scope), trained
        assert sorted(subject.deltas) == SDXL.cd_layers(pipe.unet) and config.cross_attention_dim == 80
        assert all(set(d) == {"to_q", "to_k", "to_v", "to_out.0"} for d in subject.deltas.values())
        assert all(delta.abs().max() > 0 for d in subject.deltas.values() for delta in d.values())

    prompt = "photo of <ada> person"
    before = _image(pipe, prompt)
    token = load_subject(pipe, out)
    with_subject = _image(pipe, prompt)
    assert token == "<ada>"
    assert np.abs(with_subject - before).max() > 1e-3  # the token (and the deltas) reach the image
    unload_subject(pipe)
    assert np.array_equal(_image(pipe, prompt), before)  # exactly the base model again


@pytest.mark.slow
@pytest.mark.long
def test_sdxl_killed_process_resumed_equals_uninterrupted(tiny_sdxl_dir, photo_dir, reg_dir, tmp_path):
    # cd+cr, scope kv+q+out: token rows in both encoders, K/V/Q/out deltas and the out-projection bias deltas.
    def command(out):
        return ["train", "--base", str(tiny_sdxl_dir), "--photos", str(photo_dir), "--reg-dir", str(reg_dir),
                "--method", "cd+cr", "--out", str(out), "--resolution", "64", "--batch-size", "2", "--steps", "6",
                "--lr", "1e-3", "--token-lr", "1e-2", "--checkpoint-every", "2", "--checkpoints-total-limit", "2"]

    straight = tmp_path / "straight"
    done = run_cli(*command(straight), env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]

    # Killed inside the torch.save of step 4's optimizer state (the probe holds it there): step 4 does not count.
    out = tmp_path / "killed"
    checkpoints = checkpoint_dir(out)
    killed = signal_when(command(out), lambda: any(checkpoints.glob("*step-0000004*/optimizer.pt")),
                         probes={"pause_when": {"torch_save_under": "step-0000004"}}, env=ONE_THREAD)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert [p.name for p in list_checkpoints(out)] == ["step-0000002"]
    resumed = run_cli(*command(out), "--resume", env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "train_summary.json").read_text())["resumed_from"] == 2

    a, b = load_file(straight / "subject.safetensors"), load_file(out / "subject.safetensors")
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bit for bit
    # every kind of tensor is there and trained: both encoders' tables, every delta and bias delta
    subject = Subject.load(straight)
    assert subject.token_embeddings.shape == (2, 32) and subject.extra_tables["text_encoder_2"].shape == (2, 48)
    assert subject.bias_deltas and set(subject.bias_deltas) == set(subject.deltas)
    assert all(delta.abs().max() > 0 for d in subject.deltas.values() for delta in d.values())


def _penultimate_by_hand(tokenizer, text_encoder, names, n):
    """Cross Initialization's start for one SDXL encoder, written without the trainer's code: that encoder's raw
    rows, column means over the names' sub-tokens, ``[bos, means, eos, pad...]`` (its own tokenizer's ids) through a
    hand-written CLIP text transformer *up to the penultimate layer* (no final layer norm): SDXL's UNet features."""
    table = text_encoder.get_input_embeddings().weight.detach().double()
    columns = [[] for _ in range(n)]
    for name in names:
        for i, token_id in enumerate(tokenizer(name).input_ids[1:-1][:n]):
            columns[i].append(table[token_id])
    means = torch.stack([torch.stack(c).mean(0) for c in columns])
    rows = lambda i: table[i][None]  # noqa: E731
    x = torch.cat([rows(tokenizer.bos_token_id), means, rows(tokenizer.eos_token_id),
                   rows(tokenizer.pad_token_id).repeat(tokenizer.model_max_length - n - 2, 1)])
    model = getattr(text_encoder, "text_model", text_encoder)  # CLIPTextModelWithProjection wraps the transformer
    x = x + model.embeddings.position_embedding.weight.detach().double()
    length, width = x.shape
    causal = torch.full((length, length), float("-inf"), dtype=torch.float64).triu(1)
    p = lambda t: t.detach().double()  # noqa: E731
    act = text_encoder.config.hidden_act
    for layer in model.encoder.layers[:-1]:  # hidden_states[-2]: every layer but the last
        h = torch.nn.functional.layer_norm(x, (width,), p(layer.layer_norm1.weight), p(layer.layer_norm1.bias), layer.layer_norm1.eps)
        att = layer.self_attn
        q, k, v = ((h @ p(proj.weight).T + p(proj.bias)).view(length, att.num_heads, -1).transpose(0, 1)
                   for proj in (att.q_proj, att.k_proj, att.v_proj))
        a = ((q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + causal).softmax(-1) @ v).transpose(0, 1).reshape(length, width)
        x = x + a @ p(att.out_proj.weight).T + p(att.out_proj.bias)
        h = torch.nn.functional.layer_norm(x, (width,), p(layer.layer_norm2.weight), p(layer.layer_norm2.bias), layer.layer_norm2.eps)
        h = h @ p(layer.mlp.fc1.weight).T + p(layer.mlp.fc1.bias)
        h = h * torch.sigmoid(1.702 * h) if act == "quick_gelu" else torch.nn.functional.gelu(h)
        x = x + h @ p(layer.mlp.fc2.weight).T + p(layer.mlp.fc2.bias)
    return x[1 : n + 1].float()


def test_cross_init_starts_each_encoder_from_its_own_penultimate_features(tiny_sdxl_dir, photo_dir, tmp_path):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    trainer = Trainer(TrainConfig.from_dict(dict(base=str(tiny_sdxl_dir), photos=str(photo_dir), method="cr",
                                                 out=str(tmp_path / "o"), resolution=64, batch_size=1, steps=1)))
    names = read_celeb_names()
    expected = {}
    for encoder, tokenizer, cls in [("text_encoder", "tokenizer", CLIPTextModel),
                                    ("text_encoder_2", "tokenizer_2", CLIPTextModelWithProjection)]:
        fresh = cls.from_pretrained(tiny_sdxl_dir, subfolder=encoder)
        expected[encoder] = _penultimate_by_hand(CLIPTokenizer.from_pretrained(tiny_sdxl_dir, subfolder=tokenizer),
                                                 fresh, names, 2)
        torch.testing.assert_close(trainer.token_rows[encoder].rows.detach(), expected[encoder], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(trainer.method.tokens.target_of(encoder), expected[encoder], atol=2e-5, rtol=1e-5)
    assert expected["text_encoder"].shape == (2, 32) and expected["text_encoder_2"].shape == (2, 48)
    # the L2 pull, per encoder, towards that encoder's own start; the step's regulariser is their sum
    moved = {name: start + 3.0 * torch.nn.functional.one_hot(torch.tensor([0, 0]), start.shape[1])
             for name, start in expected.items()}
    for name, rows in moved.items():
        assert trainer.method.extra_loss(rows, name).item() == pytest.approx(1e-5 * 3.0, rel=1e-5)
    with torch.no_grad():
        for name, rows in moved.items():
            trainer.token_rows[name].rows.copy_(rows)
    _, logs = trainer.step_loss(0)
    assert logs["reg"] == pytest.approx(2 * 1e-5 * 3.0, rel=1e-4)


def test_the_trainer_conditions_the_unet_as_the_sdxl_pipeline(tiny_sdxl_dir, photo_dir, tmp_path):
    """Context (both encoders' penultimate states), pooled text and size/crop ids equal StableDiffusionXLPipeline's
    own ``encode_prompt`` and ``_get_add_time_ids`` for an image of the training resolution."""
    from diffusers import StableDiffusionXLPipeline

    trainer = Trainer(TrainConfig.from_dict(dict(base=str(tiny_sdxl_dir), photos=str(photo_dir), method="cd",
                                                 out=str(tmp_path / "o"), resolution=64, batch_size=1, steps=1)))
    prompts = ["photo of a person", "a dog on the beach"]
    cond = trainer.encode_text(prompts, grad=False)
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
    context, _, pooled, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False)
    time_ids = pipe._get_add_time_ids((64, 64), (0, 0), (64, 64), dtype=context.dtype,
                                      text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    assert torch.equal(cond.encoder_hidden_states, context)
    assert torch.equal(cond.added_cond_kwargs["text_embeds"], pooled)
    assert torch.equal(cond.added_cond_kwargs["time_ids"], time_ids.repeat(2, 1))
    # the class-prompt cache holds one such conditioning per caption, and the batch concatenates them
    assert trainer.reg is None and set(trainer.trainable_tensors()) >= {"token_rows", "token_rows.text_encoder_2"}


def test_the_trainer_names_no_model_family():
    source = (REPO_ROOT / "training" / "trainer" / "loop.py").read_text(encoding="utf-8")
    names = {node.id for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Name)}
    for word in ("sdxl", "sd1", "xl", "stablediffusionpipeline", "text_encoder_2", "tokenizer_2", "penultimate",
                 "hidden_states", "time_ids", "text_embeds"):
        assert word not in source.lower(), word
    assert not names & {"SD1", "SDXL"}


def test_five_setups_sdxl_config_resolves_without_the_hub():
    import dataclasses

    from subjectgen_training.evaluation import EvaluateConfig
    from subjectgen_training.experiment.config import load_experiment_config, shipped_configs
    from subjectgen_training.sampling.generate import GenerateConfig
    from subjectgen_training.sampling.regularize import RegularizeConfig

    assert "five_setups_sdxl" in shipped_configs()
    config = load_experiment_config("five_setups_sdxl")
    assert config.base == "stabilityai/stable-diffusion-xl-base-1.0" and config.train["resolution"] == 1024
    assert [s.name for s in config.setups] == ["cd-noreg", "cd-reg-base", "cd-reg-alt", "cr", "cd+cr-reg"]
    methods = {s.name: (s.method, s.regularization) for s in config.setups}
    assert methods["cd-noreg"] == ("cd", None) and methods["cr"] == ("cr", None)
    assert methods["cd-reg-alt"] == ("cd", "alt") and methods["cd+cr-reg"] == ("cd+cr", "base")
    assert config.regularizations["alt"].model == "RunDiffusion/Juggernaut-XI-v11"
    assert config.regularizations["alt"].lora is None and config.regularizations["base"].model == config.base
    for spec in config.regularizations.values():
        assert spec.resolution == 1024
        RegularizeConfig(**dataclasses.asdict(spec), out="reg")
    for setup in config.setups:  # each setup's training config resolves (resolution given: no Hub read)
        resolved = TrainConfig.from_dict({**config.train, **setup.train, "base": config.base, "photos": "p",
                                          "method": setup.method, "out": "o", "reg_dir": None}).resolved().sized()
        assert resolved.resolution == 1024 and resolved.gradient_checkpointing and resolved.mixed_precision == "fp16"
    GenerateConfig(base=config.base, out="g", **dataclasses.asdict(config.generate))
    EvaluateConfig(images="i", reference="r", out="e", **dataclasses.asdict(config.evaluate))
