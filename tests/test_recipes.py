"""The published recipes (issue 10): learning-rate scaling, the "ktn" start, the instance-loss averaging, exact
deltas under mixed precision and Cross Initialization's caption templates.

References: diffusers ``examples/custom_diffusion/train_custom_diffusion.py`` (its README's faces recipe) and
lyuPang/CrossInitialization ``train_cross_init.py`` / ``textual_inversion_dataset.py``.
"""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
import torch

from _cli import run_cli
from subjectgen_training.data.captions import CAPTION_TEMPLATES, CaptionMaker
from subjectgen_training.trainer.losses import instance_loss, prior_loss
from subjectgen_training.methods import get_method
from subjectgen_training.methods.word_init import init_word_ids
from subjectgen_training.trainer.config import TrainConfig

REQUIRED = dict(base="model", photos="photos", out="out")
KTN_ID = 42170  # the entry "ktn" (no end-of-word mark) of SD 1.x's CLIP vocabulary


# -- learning rates ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, extra, processes, expected", [
    # Custom Diffusion: lr x batch x processes, x2 with prior preservation (the faces recipe: 5e-6 at batch 2 -> 2e-5)
    ("cd", dict(batch_size=2, reg_dir="R", lr=5e-6), 1, (2e-5, 2e-5)),
    ("cd", dict(batch_size=2, reg_dir="R", lr=5e-6), 2, (4e-5, 4e-5)),  # the seed's two GPUs
    ("cd", dict(batch_size=2, lr=5e-6), 1, (1e-5, 1e-5)),  # no regularisation: no x2
    # Cross Initialization: token lr x batch x processes (its README: 0.000625 at batch 8 -> 0.005)
    ("cr", dict(), 1, (None, 0.005)),
    ("cr", dict(batch_size=2), 1, (None, 0.00125)),
    # cd+cr: the deltas follow CD's rule, the token rows CR's
    ("cd+cr", dict(reg_dir="R"), 1, (2e-5, 0.00125)),
    # --no-scale-lr: as given
    ("cd", dict(batch_size=2, reg_dir="R", lr=5e-6, scale_lr=False), 2, (5e-6, 5e-6)),
    ("cr", dict(batch_size=2, token_lr=0.003, scale_lr=False), 1, (None, 0.003)),
])
def test_effective_rates_follow_each_reference_rule(method, extra, processes, expected):
    config = TrainConfig.from_dict({**REQUIRED, "method": method, **extra}).resolved()
    rates = config.effective_rates(processes)
    got = (rates.lr, rates.token_lr)
    assert got[0] == pytest.approx(expected[0]) if expected[0] is not None else got[0] is None
    assert got[1] == pytest.approx(expected[1])


@pytest.fixture(scope="module")
def photo_dirs(tmp_path_factory, astronaut_image, grace_hopper_image):
    photos, reg = tmp_path_factory.mktemp("photos"), tmp_path_factory.mktemp("reg")
    for i, box in enumerate([(0, 0, 400, 400), (60, 0, 460, 400), (0, 40, 420, 460)]):
        astronaut_image.crop(box).save(photos / f"photo{i}.png")
    for i, box in enumerate([(0, 0, 300, 300), (100, 100, 400, 400)]):
        grace_hopper_image.crop(box).save(reg / f"person{i}.png")
    return photos, reg


def _train(tiny_sd_dir, photos, out, *flags):
    result = run_cli("train", "--base", str(tiny_sd_dir), "--photos", str(photos), "--out", str(out), "--steps", "1",
                     "--resolution", "64", *flags, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result, json.loads((out / "train_config.json").read_text())


@pytest.mark.slow
def test_cli_records_and_prints_the_scaled_rates(tiny_sd_dir, photo_dirs, tmp_path):
    photos, reg = photo_dirs
    result, saved = _train(tiny_sd_dir, photos, tmp_path / "cd", "--method", "cd", "--batch-size", "2", "--reg-dir",
                           str(reg), "--lr", "5e-6")
    assert saved["scale_lr"] is True and saved["lr"] == 5e-6
    assert saved["effective_lr"] == pytest.approx(2e-5) and saved["effective_token_lr"] == pytest.approx(2e-5)
    assert "effective_lr 2e-05" in result.stdout and "effective_token_lr 2e-05" in result.stdout

    result, saved = _train(tiny_sd_dir, photos, tmp_path / "cr", "--method", "cr", "--batch-size", "2")
    assert saved["effective_lr"] is None and saved["effective_token_lr"] == pytest.approx(0.00125)
    assert "effective_token_lr 0.00125" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["no", "fp16", "bf16"])
def test_a_run_that_trains_nothing_saves_the_ktn_row_and_zero_deltas(tiny_sd_dir, photo_dirs, tmp_path, precision):
    """One step at lr 1e-12 moves nothing: the token is still row 42170 and every delta is zero, also in fp16 and bf16
    (where subtracting the bf16-rounded base would leave deltas of about 1e-3)."""
    from transformers import CLIPTextModel

    from subjectgen_diffusers.subject_format import Subject

    photos, _ = photo_dirs
    _, saved = _train(tiny_sd_dir, photos, tmp_path / "s", "--method", "cd", "--lr", "1e-12", "--token-lr", "1e-12",
                      "--no-scale-lr", "--mixed-precision", precision, "--batch-size", "1")
    assert saved["scale_lr"] is False and saved["effective_lr"] == 1e-12 and saved["effective_token_lr"] == 1e-12
    subject = Subject.load(tmp_path / "s")
    base_row = CLIPTextModel.from_pretrained(tiny_sd_dir, subfolder="text_encoder").get_input_embeddings().weight[KTN_ID]
    torch.testing.assert_close(subject.token_embeddings[0], base_row.detach().float(), rtol=0, atol=1e-7)
    largest = max(d.abs().max().item() for layer in subject.deltas.values() for d in layer.values())
    largest = max([largest] + [b.abs().max().item() for b in subject.bias_deltas.values()])
    assert largest <= 1e-7, largest


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_deltas_subtract_the_float32_start_when_the_base_is_cast(dtype):
    """The trainer casts the frozen UNet to the compute dtype after attaching the trainable copies; an untrained
    copy must still export zero deltas."""
    from subjectgen_diffusers.families import get_family
    from subjectgen_training.methods.custom_diffusion import CustomDiffusionDeltas
    from subjectgen_training.models.tiny_models import tiny_unet
    from subjectgen_training.models.model_parts import cast_frozen_weights

    torch.manual_seed(0)
    unet = tiny_unet()
    unet.requires_grad_(False)
    deltas = CustomDiffusionDeltas("kv+q+out")
    deltas.attach(unet, get_family("sd1").cd_layers(unet))
    cast_frozen_weights([unet], dtype)
    layer = next(iter(deltas.processors))
    base = unet.get_submodule(layer).to_k.weight
    assert base.dtype == dtype  # the cast happened: a delta against it would carry its rounding
    naive = deltas.processors[layer].to_k_custom_diffusion.weight.float() - base.float()
    assert naive.abs().max() > 1e-5
    _, exported, bias = deltas.export()
    assert max(d.abs().max().item() for projs in exported.values() for d in projs.values()) == 0.0
    assert max(b.abs().max().item() for b in bias.values()) == 0.0


# -- the modifier token's start ----------------------------------------------------------------------------------
def test_init_word_is_looked_up_as_one_vocabulary_entry():
    from subjectgen_diffusers.tokenizer import build_clip_tokenizer

    tokenizer = build_clip_tokenizer()
    assert init_word_ids(tokenizer, "ktn") == ([KTN_ID], "vocabulary entry")
    assert tokenizer("ktn", add_special_tokens=False).input_ids[0] != KTN_ID  # BPE alone would start from "k"
    ids, how = init_word_ids(tokenizer, "zqxjvk")  # not an entry: the mean of its BPE pieces, said so
    assert how == "mean of BPE pieces" and ids == tokenizer("zqxjvk", add_special_tokens=False).input_ids
    assert len(ids) > 1


def test_a_word_that_is_no_entry_starts_from_the_mean_of_its_pieces(tiny_pipe):
    from subjectgen_training.methods.word_init import WordInitTokens

    tokens = WordInitTokens("zqxjvk")
    rows = tokens.initial_rows(tiny_pipe.tokenizer, tiny_pipe.text_encoder, [49408, 49409])
    table = tiny_pipe.text_encoder.get_input_embeddings().weight.detach()
    pieces = tiny_pipe.tokenizer("zqxjvk", add_special_tokens=False).input_ids
    expected = sum(table[i] for i in pieces) / len(pieces)
    torch.testing.assert_close(rows, expected.expand(2, -1))


# -- instance vs prior loss ----------------------------------------------------------------------------------------
def test_instance_loss_is_the_custom_diffusion_scripts_formula():
    """diffusers' script: ``((mse(pred, target, none) * mask).sum([1,2,3]) / mask.sum([1,2,3])).mean()`` with a
    ``[B,1,h,w]`` mask; written here with explicit loops over samples, channels and pixels."""
    generator = torch.Generator().manual_seed(0)
    prediction, target = torch.randn(2, 4, 5, 6, generator=generator), torch.randn(2, 4, 5, 6, generator=generator)
    mask = (torch.rand(2, 1, 5, 6, generator=generator) > 0.4).float()
    expected = []
    for b in range(2):
        numerator, pixels = 0.0, 0.0
        for y in range(5):
            for x in range(6):
                pixels += float(mask[b, 0, y, x])
                for c in range(4):
                    numerator += float(mask[b, 0, y, x]) * float(prediction[b, c, y, x] - target[b, c, y, x]) ** 2
        expected.append(numerator / pixels)
    got = instance_loss(prediction, target, mask, "pixels")
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-5, atol=1e-6)
    # CR's plain mean over elements is the same divided by the 4 channels, and equals F.mse_loss without a mask
    torch.testing.assert_close(instance_loss(prediction, target, mask, "elements"), got / 4)
    ones = torch.ones(2, 1, 5, 6)
    torch.testing.assert_close(instance_loss(prediction, target, ones, "elements").mean(),
                               torch.nn.functional.mse_loss(prediction, target))
    torch.testing.assert_close(prior_loss(prediction, target), torch.nn.functional.mse_loss(prediction, target))


def test_each_method_averages_its_instance_loss_as_its_reference():
    assert get_method("cd").instance_loss_mean == "pixels"  # train_custom_diffusion.py
    assert get_method("cr").instance_loss_mean == "elements"  # train_cross_init.py: F.mse_loss(mean)
    assert get_method("cd+cr").instance_loss_mean == "pixels"  # the deltas' recipe (README "Recipes")


# -- Cross Initialization's captions ------------------------------------------------------------------------------
def test_templates_are_the_reference_list_with_its_repeats():
    """textual_inversion_dataset.py's list: 81 entries, 27 per medium (photo / illustration / depiction); the 12
    entries that name no medium appear once per block, so 3 times, and there are 57 distinct ones."""
    assert len(CAPTION_TEMPLATES) == 81
    counts = Counter(CAPTION_TEMPLATES)
    assert len(counts) == 57
    assert counts["a rendering of a {}"] == 3 and counts["a good photo of the {}"] == 3
    assert counts["a photo of a {}"] == 1 and counts["an illustration of a {}"] == 1 and counts["a depiction of a {}"] == 1
    assert CAPTION_TEMPLATES[0] == "a photo of a {}" and CAPTION_TEMPLATES[27] == "an illustration of a {}"
    assert CAPTION_TEMPLATES[-1] == "a depiction of a small {}"
    assert all(t.count("{}") == 1 for t in CAPTION_TEMPLATES)


def test_cr_captions_put_face_of_token_person_into_a_template():
    config = TrainConfig.from_dict({**REQUIRED, "method": "cr", "token": "<p>"}).resolved()
    maker = CaptionMaker(config.prompt, config.token, config.num_vectors, config.caption_templates)
    rng = random.Random(0)
    captions = [maker.caption(rng) for _ in range(400)]
    phrase = "face of <p> <p>_1 person"
    assert all(c in {t.format(phrase) for t in CAPTION_TEMPLATES} for c in captions)
    assert len(set(captions)) > 40  # drawn across the list, not one template


def test_zoom_prefixes_go_inside_the_template():
    maker = CaptionMaker("face of {} person", "<p>", 1, templates=True)
    rng = random.Random(1)
    for prefix in ("a far away ", "very small ", "zoomed in ", "close up "):
        caption = maker.caption(rng, prefix)
        modifier = prefix.strip().removeprefix("a ")
        assert f"{modifier} face of <p> person" in caption and not caption.startswith(prefix)
        assert " a a " not in f" {caption} " and " the a " not in f" {caption} "
    plain = CaptionMaker("photo of a {} person", "<p>", 1, templates=False)
    assert plain.caption(rng, "a far away ") == "a far away photo of a <p> person"  # CD's own placement


# -- optimiser and precision switches -------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, message", [
    (dict(use_8bit_adam=True), "--use-8bit-adam needs a CUDA GPU and the bitsandbytes package"),
])
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusals")
def test_8bit_adam_is_refused_on_a_cpu_before_any_model_loads(photo_dirs, extra, message):
    from subjectgen_diffusers.errors import SubjectgenError
    from subjectgen_training.methods import build_method
    from subjectgen_training.trainer.loop import check_inputs

    config = TrainConfig.from_dict({**REQUIRED, "photos": str(photo_dirs[0]), "method": "cd", "resolution": 64,
                                    **extra}).resolved()
    with pytest.raises(SubjectgenError, match=message):
        check_inputs(config, build_method(config))


def test_8bit_adam_is_off_by_default_for_every_method():
    for name in ("cd", "cr", "cd+cr"):
        assert TrainConfig.from_dict({**REQUIRED, "method": name}).resolved().use_8bit_adam is False


# -- the optimiser, read from a real run ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("method, clipped", [("cd", True), ("cr", False)])
def test_the_optimizer_a_real_run_builds_and_steps_is_the_recipes(tiny_sd_dir, photo_dirs, tmp_path, monkeypatch,
                                                                   method, clipped):
    """README's recipe table: AdamW with betas 0.9/0.999, eps 1e-8, weight decay 1e-2; gradient clipping at norm 1.0
    for `cd` (none for `cr`); a constant rate with no warm-up. Read from what the trainer built and did: the optimizer
    object, every clipping call (and the gradient norm after it), each step's rates and the optimizer state saved in
    the checkpoint -- not from the config's defaults."""
    from accelerate import Accelerator

    from subjectgen_training.trainer.loop import Trainer

    clips = []
    real_clip = Accelerator.clip_grad_norm_

    def recording_clip(self, parameters, max_norm, norm_type=2):
        parameters = list(parameters)
        total = real_clip(self, parameters, max_norm, norm_type)
        after = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in parameters
                                                      if p.grad is not None]))
        clips.append((max_norm, float(total), float(after)))
        return total

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", recording_clip)
    photos, reg = photo_dirs
    extra = dict(reg_dir=str(reg), lr=1e-2) if method == "cd" else {}
    config = TrainConfig.from_dict(dict(base=str(tiny_sd_dir), photos=str(photos), method=method, out=str(tmp_path / "out"),
                                        resolution=64, batch_size=1, steps=4, checkpoint_every=2, keep_checkpoints=True,
                                        token_lr=1e-1, **extra))
    rates = []
    trainer = Trainer(config, on_step=lambda done, logs: rates.append([g["lr"] for g in trainer.optimizer.param_groups]))
    built = trainer.optimizer.optimizer  # accelerate wraps the optimizer the trainer made
    assert type(built) is torch.optim.AdamW
    expected = trainer.rates
    first = [expected.token_lr] + ([expected.lr] if method == "cd" else [])
    trainer.run()

    assert rates == [first] * 4  # constant from the first step: no warm-up, no decay
    state = torch.load(tmp_path / "out.checkpoints" / "step-0000002" / "optimizer.pt", weights_only=True)
    assert len(state["param_groups"]) == len(first)
    for group, lr in zip(state["param_groups"], first):
        assert (group["betas"], group["eps"], group["weight_decay"], group["lr"]) == ((0.9, 0.999), 1e-8, 1e-2, lr)
        assert group["amsgrad"] is False and group.get("maximize") is False
    assert all(s["step"] == 2 for s in state["state"].values())  # one AdamW step per batch, no accumulation
    if clipped:
        assert [c[0] for c in clips] == [1.0] * 4
        assert any(total > 1.0 for _, total, _ in clips), clips  # the rates above make it clip for real
        assert all(after <= 1.0 + 1e-4 for _, _, after in clips), clips
    else:
        assert clips == []
