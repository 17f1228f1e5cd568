"""Hub: loading by repo id from a pre-populated cache offline, the model card, and the upload up to the client call."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _plugin_fixtures import autospec_api, make_subject, unet_out
from huggingface_hub import ModelCard

from subjectgen_diffusers import (
    SubjectgenError,
    load_subject,
    push_subject_to_hub,
    push_to_hub,
    render_subject_card,
    unload_subject,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def _populate_cache(hub_cache: Path, repo_id: str, revisions: dict[str, Path], refs: dict[str, str]) -> None:
    """The layout huggingface_hub writes: models--owner--name/{blobs, snapshots/<commit>/..., refs/<name>}."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    for commit, folder in revisions.items():
        shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for ref, commit in refs.items():
        (repo / "refs" / ref).write_text(commit)


@pytest.fixture
def two_versions(tmp_path, tiny_pipe):
    v1 = make_subject(tiny_pipe, "<hub>", scope="kv", seed=1).save(tmp_path / "v1")
    v2 = make_subject(tiny_pipe, "<hub>", scope="kv", seed=2).save(tmp_path / "v2")
    cache = tmp_path / "hf" / "hub"
    _populate_cache(cache, "someone/alice", {COMMIT_A: v1, COMMIT_B: v2}, {"main": COMMIT_B})
    return cache, v1, v2


def test_repo_id_from_cache_with_revisions(two_versions, tiny_pipe):
    cache, v1, v2 = two_versions
    outputs = {}
    for name, source, kwargs in [
        ("v1-local", v1, {}),
        ("v2-local", v2, {}),
        ("main", "someone/alice", {"cache_dir": cache, "local_files_only": True}),
        ("pinned", "someone/alice", {"cache_dir": cache, "local_files_only": True, "revision": COMMIT_A}),
    ]:
        assert load_subject(tiny_pipe, source, **kwargs) == "<hub>"
        outputs[name] = unet_out(tiny_pipe, "a <hub>")
        unload_subject(tiny_pipe, "<hub>")
    assert torch.equal(outputs["main"], outputs["v2-local"])
    assert torch.equal(outputs["pinned"], outputs["v1-local"])
    assert not torch.equal(outputs["v1-local"], outputs["v2-local"])


def test_repo_missing_from_cache_offline_says_what_to_do(tmp_path, tiny_pipe):
    with pytest.raises(SubjectgenError, match="neither a local path nor in the Hugging Face cache"):
        load_subject(tiny_pipe, "someone/nobody", cache_dir=tmp_path, local_files_only=True)


def test_hf_hub_offline_in_a_fresh_process(two_versions):
    cache, _, v2 = two_versions
    script = textwrap.dedent(
        """
        import torch
        from subjectgen_training.models.tiny_models import build_tiny_sd_pipeline
        from subjectgen_diffusers import load_subject, loaded_subjects
        pipe = build_tiny_sd_pipeline()
        token = load_subject(pipe, "someone/alice")
        print(token, len(loaded_subjects(pipe)[token].layers))
        """
    )
    env = {**os.environ, "HF_HOME": str(cache.parent), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    layers = json.loads((v2 / "subject_config.json").read_text())["layers"]
    assert done.stdout.split()[-2:] == ["<hub>", str(len(layers))]


def test_model_card_front_matter_and_usage(tmp_path, tiny_pipe):
    subject = make_subject(tiny_pipe, "<alice>", scope="kv", seed=1)
    subject.config.base_model = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    folder = subject.save(tmp_path / "alice")
    card = ModelCard(render_subject_card(folder, "someone/alice"))
    assert card.data.base_model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert card.data.library_name == "diffusers"
    assert {"text-to-image", "custom-diffusion", "subjectgen-diffusers"} <= set(card.data.tags)
    assert card.data.to_dict()["token"] == "<alice>" and card.data.to_dict()["method"] == "cd+cr"
    assert 'load_subject(pipe, "someone/alice")' in card.text
    assert "| steps | `10` |" in card.text and "Custom Diffusion + Cross Initialization" in card.text
    assert "(https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5)" in card.text

    local = make_subject(tiny_pipe, "<bob>", scope="kv", seed=2)
    local.config.base_model = "my-finetune"  # trained on a local folder: no Hub page to link to
    local_card = ModelCard(render_subject_card(local.save(tmp_path / "bob"), "someone/bob"))
    assert "huggingface.co/my-finetune" not in local_card.text and "`my-finetune`" in local_card.text
    assert local_card.data.base_model is None
    (folder / "subject_config.json").unlink()
    with pytest.raises(SubjectgenError, match="has no subject_config.json"):
        render_subject_card(folder)


def test_push_writes_the_card_then_uploads(tmp_path, tiny_pipe):
    folder = make_subject(tiny_pipe, "<alice>", scope=None).save(tmp_path / "alice")
    api = autospec_api()
    assert push_subject_to_hub(folder, "someone/alice", private=True, api=api) == "commit-info"
    assert [call[0] for call in api.mock_calls] == ["create_repo", "upload_folder"]
    api.create_repo.assert_called_once_with(repo_id="someone/alice", repo_type="model", private=True, exist_ok=True)
    upload = api.upload_folder.call_args.kwargs
    assert upload["repo_id"] == "someone/alice" and Path(upload["folder_path"]) == folder
    assert upload["repo_type"] == "model" and upload["create_pr"] is False and upload["revision"] is None
    assert {"README.md", "subject_config.json", "subject.safetensors"} <= set(api.files_at_upload)  # card written first
    assert "README.md" in upload["allow_patterns"] and "subject.safetensors" in upload["allow_patterns"]
    assert ModelCard.load(folder / "README.md").data.library_name == "diffusers"
    with pytest.raises(SubjectgenError, match="not of the form 'owner/name'"):
        push_to_hub(folder, "no slash", api=api)


@pytest.mark.slow
def test_push_command_uploads_with_its_flags(tmp_path, tiny_pipe):
    """`subjectgen push` in a real subprocess, with ``HfApi`` replaced by an autospec of itself that records."""
    from _cli import run_cli

    folder = make_subject(tiny_pipe, "<alice>", scope="kv+q+out", seed=3).save(tmp_path / "alice")
    record = tmp_path / "calls.json"
    done = run_cli("push", str(folder), "someone/alice", "--private", "--revision", "dev", "--commit-message",
                   "first version", "--create-pr", probes={"fake_hf_api": str(record)}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"https://huggingface.co/someone/alice/commit/{'c' * 40}"
    create, upload = json.loads(record.read_text())
    assert create["method"] == "create_repo" and create["kwargs"] == {
        "repo_id": "someone/alice", "repo_type": "model", "private": True, "exist_ok": True}
    assert upload["method"] == "upload_folder"
    kwargs = upload["kwargs"]
    assert (kwargs["repo_id"], kwargs["revision"], kwargs["commit_message"], kwargs["create_pr"]) == (
        "someone/alice", "dev", "first version", True)
    assert Path(kwargs["folder_path"]) == folder
    assert {"README.md", "subject_config.json", "subject.safetensors"} <= set(upload["files"])
    card = ModelCard.load(folder / "README.md")
    assert card.data.to_dict()["token"] == "<alice>" and 'load_subject(pipe, "someone/alice")' in card.text

    # --card-only writes the card and calls nothing; a bad repo id stops with `error:` before any upload.
    (folder / "README.md").unlink()
    card_only = run_cli("push", str(folder), "someone/alice", "--card-only", probes={"fake_hf_api": str(record)})
    assert card_only.returncode == 0 and (folder / "README.md").is_file() and json.loads(record.read_text()) == []
    bad = run_cli("push", str(folder), "alice", probes={"fake_hf_api": str(record)})
    assert bad.returncode == 2 and "error: repo id 'alice' is not of the form 'owner/name'" in bad.stderr
    assert json.loads(record.read_text()) == []


def test_weight_name_picks_one_file_of_a_repo(tmp_path, tiny_pipe):
    from _plugin_fixtures import encode, word_vectors
    from safetensors.torch import save_file

    repo = tmp_path / "repo"
    repo.mkdir()
    save_file({"<a>": word_vectors(tiny_pipe, ["cat"])}, str(repo / "learned_embeds.safetensors"))
    save_file({"<b>": word_vectors(tiny_pipe, ["tree"])}, str(repo / "second.safetensors"))
    _populate_cache(tmp_path / "cache", "someone/embeds", {COMMIT_A: repo}, {"main": COMMIT_A})
    kwargs = {"cache_dir": tmp_path / "cache", "local_files_only": True}
    assert load_subject(tiny_pipe, "someone/embeds", **kwargs) == "<a>"
    assert load_subject(tiny_pipe, "someone/embeds", weight_name="second.safetensors", **kwargs) == "<b>"
    assert torch.equal(encode(tiny_pipe, "a <a> and a <b>"), encode(tiny_pipe, "a cat and a tree"))
