"""SubjectPipeline, SubjectLoaderMixin, from_pipe and the single-file community pipeline, on a saved tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _plugin_fixtures import make_subject, unet_out, word_vectors
from diffusers import DiffusionPipeline, StableDiffusionPipeline

import subjectgen_diffusers
from subjectgen_diffusers import SubjectgenError, SubjectPipeline, load_subject, loaded_subjects

COMMUNITY_FILE = Path(subjectgen_diffusers.__file__).parent / "community" / "subject_pipeline.py"


def _sample(pipe, prompt) -> torch.Tensor:
    return pipe(prompt, num_inference_steps=2, height=64, width=64, output_type="pt",
                generator=torch.Generator().manual_seed(0)).images


@pytest.fixture(scope="module")
def subject_dirs(tmp_path_factory, tiny_sd_dir):
    base = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    root = tmp_path_factory.mktemp("subjects")
    cd = make_subject(base, "<s1>", scope="kv", seed=1, magnitude=0.2).save(root / "cd")
    cr = make_subject(base, "<s2>", scope=None, vectors=word_vectors(base, ["dog"])).save(root / "cr")
    return cd, cr


def test_from_pretrained_loads_subjects_and_fills_braces(tiny_sd_dir, subject_dirs):
    cd, _ = subject_dirs
    pipe = SubjectPipeline.from_pretrained(tiny_sd_dir, subject=cd)
    assert isinstance(pipe, StableDiffusionPipeline) and pipe.subject_tokens == ["<s1>"]
    braces = _sample(pipe, "a photo of {}")
    assert torch.equal(braces, _sample(pipe, "a photo of <s1>"))
    assert pipe.fill_subject_prompt(["{} smiling", "no subject"]) == ["<s1> smiling", "no subject"]
    stock = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    load_subject(stock, cd)
    assert torch.equal(braces, _sample(stock, "a photo of <s1>"))
    pipe.set_subject_scale("<s1>", 0.0)
    pipe.unload_subject("<s1>")
    assert not pipe.subject_tokens
    with pytest.raises(SubjectgenError, match="exactly one loaded subject, 0 are loaded"):
        pipe("a photo of {}", num_inference_steps=1)


def test_two_subjects_cd_and_cr_and_ambiguous_braces(tiny_sd_dir, subject_dirs):
    pipe = SubjectPipeline.from_pretrained(tiny_sd_dir, subject=list(subject_dirs), subject_scale=0.5)
    assert pipe.subject_tokens == ["<s1>", "<s2>"]
    assert {t: e.scale for t, e in loaded_subjects(pipe).items()} == {"<s1>": 0.5, "<s2>": 0.5}
    with pytest.raises(SubjectgenError, match="exactly one loaded subject, 2 are loaded"):
        pipe.fill_subject_prompt("a photo of {}")
    pipe.set_subject_scale("<s1>", 0.0)  # CD deltas off: only the token differs from the base
    pipe.unload_subject("<s1>")
    plain = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    assert torch.equal(unet_out(pipe, "a <s2>"), unet_out(plain, "a dog"))


def test_from_pipe_shares_loaded_subjects(tiny_sd_dir, subject_dirs):
    stock = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    load_subject(stock, subject_dirs[0])
    pipe = SubjectPipeline.from_pipe(stock)
    assert isinstance(pipe, SubjectPipeline) and pipe.subject_tokens == ["<s1>"]
    assert torch.equal(_sample(pipe, "{} at night"), _sample(stock, "<s1> at night"))
    pipe.unload_subject()
    assert loaded_subjects(stock) == {}  # same UNet, same record
    base = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    assert torch.equal(_sample(stock, "a person at night"), _sample(base, "a person at night"))


def test_single_file_community_pipeline(tiny_sd_dir, subject_dirs):
    pipe = DiffusionPipeline.from_pretrained(tiny_sd_dir, custom_pipeline=str(COMMUNITY_FILE), trust_remote_code=True)
    assert type(pipe).__name__ == "SubjectPipeline" and isinstance(pipe, SubjectPipeline)
    assert pipe.load_subject(subject_dirs[0]) == "<s1>"
    reference = SubjectPipeline.from_pretrained(tiny_sd_dir, subject=subject_dirs[0])
    assert torch.equal(_sample(pipe, "a photo of {}"), _sample(reference, "a photo of {}"))


def test_package_import_is_light_and_names_resolve_lazily():
    import subprocess
    import sys

    code = ("import sys, subjectgen_diffusers as s; light = 'torch' not in sys.modules; "
            "s.load_subject; s.SubjectPipeline; print(light, 'diffusers' in sys.modules, sorted(s.__all__) == s.__all__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(subjectgen_diffusers.__file__).parents[1])
    assert done.stdout.split() == ["True", "True", "True"], done.stderr[-2000:]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        subjectgen_diffusers.nope  # noqa: B018
