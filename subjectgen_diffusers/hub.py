"""Hugging Face Hub: resolve a subject source (local path or repo id) and publish a subject with a model card.

Downloads go through ``huggingface_hub.snapshot_download`` (cache, revisions and ``HF_HUB_OFFLINE`` behave as for any
diffusers model); uploads through ``HfApi.create_repo`` + ``HfApi.upload_folder``. The card is rendered from
``hub_cards/subject_card.md`` with ``huggingface_hub.ModelCard`` (YAML front matter from ``ModelCardData``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .atomic_io import atomic_write_text
from .errors import SubjectgenError
from .methods import method_info
from .subject_format import CONFIG_NAME, WEIGHTS_NAME, SubjectConfig

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SUBJECT_FILE_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.pt", "README.md"]
TRAIN_CONFIG_NAME = "train_config.json"
PUSHED_FILES = (CONFIG_NAME, WEIGHTS_NAME, "README.md", TRAIN_CONFIG_NAME)
"""What ``push`` uploads from a subject folder, by exact name: the subject's own files, nothing else it holds."""


def is_repo_id(source: str) -> bool:
    return bool(_REPO_ID.match(source)) and ".." not in source


def resolve_source(
    source,
    *,
    weight_name: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
) -> Path:
    """A local path as is; a Hub repo id downloaded (or found in the cache) with ``snapshot_download``."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    text = str(source)
    if not is_repo_id(text):
        raise SubjectgenError(f"{text} does not exist; pass an existing subject folder or file, or a Hub repo id 'owner/name'.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from .formats import CD_WEIGHT_NAMES

    # a Custom Diffusion weights file needs its token file beside it, so that case fetches the whole subject
    patterns = [weight_name, CONFIG_NAME] if weight_name and weight_name not in CD_WEIGHT_NAMES else SUBJECT_FILE_PATTERNS
    try:
        folder = snapshot_download(
            text,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=bool(local_files_only),
            allow_patterns=patterns,
            library_name="subjectgen-diffusers",
        )
    except LocalEntryNotFoundError as error:
        raise SubjectgenError(
            f"{text!r} is neither a local path nor in the Hugging Face cache, and the Hub cannot be reached "
            f"(offline?). Check the path, or go online once to download it. ({error})"
        ) from error
    except HfHubHTTPError as error:
        raise SubjectgenError(f"could not download {text!r} (revision {revision or 'main'}) from the Hub: {error}") from error
    return Path(folder)


def render_subject_card(folder: str | Path, repo_id: str | None = None) -> str:
    """The README.md model card for the subject in ``folder`` (ours: ``subject_config.json``)."""
    from huggingface_hub import ModelCard, ModelCardData

    from subjectgen_diffusers.hub_cards import read_template

    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise SubjectgenError(f"{folder} has no {CONFIG_NAME}; only subject folders written by subjectgen can be carded.")
    config = SubjectConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
    repo_id = repo_id or f"<user>/{folder.name}"
    weights = folder / WEIGHTS_NAME
    size_mib = round(weights.stat().st_size / 2**20, 2) if weights.is_file() else 0.0
    card_data = ModelCardData(
        base_model=config.base_model if is_repo_id(config.base_model) else None,  # the card's metadata wants a Hub id
        library_name="diffusers",
        tags=["text-to-image", config.model_family.hub_tag, "diffusers", "subjectgen-diffusers", method_info(config.method).hub_tag],
        instance_prompt=f"a photo of {config.token}",
        token=config.token,
        method=config.method,
    )
    card = ModelCard.from_template(
        card_data,
        template_str=read_template(),
        title=f"{' + '.join(t for t, _ in config.tokens)} — {method_info(config.method).title} subject",
        base_model=config.base_model,
        base_model_on_hub=is_repo_id(config.base_model),  # a local folder name gets no huggingface.co link
        family_title=config.model_family.title,
        pipeline_class=config.model_family.pipeline_class_name,
        method=config.method,
        method_long=method_info(config.method).title,
        method_notes=method_info(config.method).note,
        token=config.token,
        num_vectors=config.num_vectors,
        cd_scope=config.cd_scope if config.has_deltas else None,
        num_layers=len(config.layers),
        delta_rank=config.delta_rank,
        dtype=config.dtype,
        size_mib=size_mib,
        repo_id=repo_id,
        training=[(key, _short(value)) for key, value in sorted(config.training.items())],
    )
    return str(card)


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 1] + "…"


def push_subject_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    api=None,
):
    """Write the model card into ``folder`` (atomically) and upload the folder to ``repo_id``; return the CommitInfo.

    ``api`` is any object with ``create_repo`` and ``upload_folder`` like ``huggingface_hub.HfApi`` (default: a new
    ``HfApi(token=token)``).
    """
    folder = Path(folder)
    if not is_repo_id(repo_id):
        raise SubjectgenError(f"repo id {repo_id!r} is not of the form 'owner/name'.")
    from .subject_check import check_subject_files

    check_subject_files(folder)  # never publish a damaged subject
    check_no_local_paths(folder)
    atomic_write_text(folder / "README.md", render_subject_card(folder, repo_id))
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        revision=revision,
        commit_message=commit_message or f"Upload subject {folder.name} with subjectgen-diffusers",
        create_pr=create_pr,
        allow_patterns=list(PUSHED_FILES),
    )


def check_no_local_paths(folder: Path) -> None:
    """Refuse to publish a subject whose JSON files still hold an absolute local path (older subjects did)."""
    from .public_names import local_paths_in

    for name in (CONFIG_NAME, TRAIN_CONFIG_NAME):
        path = folder / name
        if not path.is_file():
            continue
        found = local_paths_in(json.loads(path.read_text(encoding="utf-8")))
        if found:
            listed = ", ".join(f"{key} = {value!r}" for key, value in found)
            raise SubjectgenError(
                f"{path} holds local paths that push would publish: {listed}. Replace each with a Hub id or the "
                f"folder's name (subjects trained now record only names), then push again.")


push_to_hub = push_subject_to_hub
"""The name the issue uses; same function."""
