"""Check a subject before any model loads: its files are whole and say what its config promises, and it fits the base.

Two checks, both reading only small files:

- :func:`check_subject_files`: ``subject_config.json`` parses and ``subject.safetensors`` is complete (safetensors
  refuses a header whose tensors do not exactly cover the file, which catches truncation), with exactly the tensor
  names and shapes the config promises (``[num_vectors, width]`` token rows per text encoder; one delta, or a pair of
  low-rank factors, per projection of ``cd_scope`` for every listed layer, an output bias delta allowed with ``kv+q+out``).
- :func:`check_subject_fits_base`: the subject's widths against the base model's ``text_encoder/config.json`` and
  ``unet/config.json`` (``subjectgen_diffusers.base_configs``; no weights): token width = the text encoder's
  ``hidden_size``, every delta the shape of the UNet weight it is added to, the layers those of this UNet.

Each failure is a :class:`SubjectCheckError` naming the file, or the subject's base and the base given, and what to do.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import SubjectgenError
from .methods import CD_SCOPES
from .subject_format import CONFIG_NAME, WEIGHTS_NAME, SubjectConfig
from .subject_parts import table_key

_LAYER = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.attentions\.(\d+)\.transformer_blocks\.(\d+)\.(attn1|attn2)$|"
                    r"^mid_block\.attentions\.(\d+)\.transformer_blocks\.(\d+)\.(attn1|attn2)$")


class SubjectCheckError(SubjectgenError):
    """A subject's files are damaged or incomplete, or the subject was made for another base model."""


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise SubjectCheckError(
            f"{path} is damaged or incomplete ({error}); a copy or download was probably cut short. Copy or "
            f"download the subject again (or retrain it); nothing was loaded.") from error


def _delta_forms(layer: str, proj: str) -> tuple[set[str], set[str]]:
    """The two ways a delta is stored: dense, or a pair of low-rank factors (``subjectgen compress``, ``--save-rank``)."""
    return {f"{layer}.{proj}.delta"}, {f"{layer}.{proj}.delta_up", f"{layer}.{proj}.delta_down"}


def missing_and_unexpected(config: SubjectConfig, names: set[str]) -> tuple[list[str], list[str]]:
    """Tensor names ``config`` promises that ``names`` lacks, and names it holds that ``config`` does not explain."""
    tables = table_shapes(config)
    explained, missing = set(tables), [key for key in tables if key not in names]
    if config.has_deltas:
        for layer in config.layers:
            for proj in CD_SCOPES[config.cd_scope]:
                dense, factors = _delta_forms(layer, proj)
                explained |= dense | factors
                if not (dense <= names or factors <= names):
                    missing.append(next(iter(dense)))
            if "to_out.0" in CD_SCOPES[config.cd_scope]:
                explained.add(f"{layer}.to_out.0.bias_delta")  # optional: present when the bias was trained
    return missing, sorted(names - explained)


def check_subject_files(folder: str | Path) -> tuple[SubjectConfig, dict[str, tuple[int, ...]]] | None:
    """Check a subject folder's two files; return its config and tensor shapes (None: not our folder format)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None  # a single file (textual inversion, A1111, ...): formats.py reads it and names a damaged one
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file():
        return None  # diffusers / Cross Initialization / A1111 layouts are read (and checked) by formats.py
    if not weights_path.is_file():
        raise SubjectCheckError(f"{weights_path} is missing: a subject folder holds {CONFIG_NAME} and {WEIGHTS_NAME}; "
                                f"copy the whole folder.")
    try:
        config = SubjectConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
    except (ValueError, TypeError, SubjectgenError) as error:
        raise SubjectCheckError(f"{config_path} is damaged ({error}); copy or download the subject again.") from error
    shapes = _shapes(weights_path)
    missing, extra = missing_and_unexpected(config, set(shapes))
    if missing or extra:
        listed = "; ".join(part for part in (f"missing {missing[:3]}" if missing else "",
                                             f"unexpected {extra[:3]}" if extra else "") if part)
        raise SubjectCheckError(f"{weights_path} does not hold the tensors {config_path.name} promises ({listed}); the "
                                f"two files are from different subjects or damaged: copy the subject folder again.")
    for key, token_shape in table_shapes(config).items():
        if shapes[key] != token_shape:
            raise SubjectCheckError(f"{weights_path}: `{key}` has shape {shapes[key]}, {config_path.name} "
                                    f"promises {token_shape}; the files are from different subjects or damaged.")
    return config, shapes


def table_shapes(config: SubjectConfig) -> dict[str, tuple[int, int]]:
    """The safetensors key and shape of each token table the config promises (one per text encoder of its family)."""
    return {table_key(encoder, index == 0): (config.total_vectors, width)
            for index, (encoder, width) in enumerate(config.table_widths().items())}


def _layer_width(unet: dict, layer: str) -> int | None:
    """The channel width of the attention module ``layer`` in a UNet2DConditionModel with config ``unet``."""
    match = _LAYER.match(layer)
    if not match:
        return None
    channels = list(unet.get("block_out_channels") or [])
    if match.group(1) is None:  # mid block
        return channels[-1] if channels and "CrossAttn" in str(unet.get("mid_block_type", "UNetMidBlock2DCrossAttn")) else None
    index, attention = int(match.group(2)), int(match.group(3))
    down = match.group(1) == "down_blocks"
    types = list(unet.get("down_block_types" if down else "up_block_types") or [])
    per_block = int(unet.get("layers_per_block", 2)) + (0 if down else 1)
    if index >= len(types) or "CrossAttn" not in types[index] or attention >= per_block:
        return None
    return channels[index] if down else list(reversed(channels))[index]


def _cross_width(unet: dict, layer: str) -> int:
    width = unet.get("cross_attention_dim")
    return width if isinstance(width, int) else int(width[0])


def check_subject_fits_base(folder: str | Path, base: str | Path, config: SubjectConfig,
                            shapes: dict[str, tuple[int, ...]], revision: str | None = None) -> None:
    """Compare the subject with the base model's configs; the error names both bases."""
    from .base_configs import read_component_config

    def refuse(what: str) -> SubjectCheckError:
        return SubjectCheckError(
            f"subject {folder} was made for base model {config.base_model!r}, not for {str(base)!r}: {what}. Pass the "
            f"base it was trained on (--base), or train the subject again on {str(base)!r}.")

    from .families import family_of_base

    family = family_of_base(base, revision)
    if family.name != config.family:
        raise refuse(f"it is a {config.model_family.title} subject (family `{config.family}`), the base is "
                     f"{family.title} (family `{family.name}`)")
    for encoder, wanted_width in config.table_widths().items():
        text = read_component_config(base, encoder, revision)
        width = text.get("hidden_size") or text.get("d_model")
        if width is not None and width != wanted_width:
            where = "text encoder" if encoder == family.text_encoders[0].encoder else f"`{encoder}`"
            raise refuse(f"its token vectors are {wanted_width}-d, the base's {where} is {width}-d")
    if not config.has_deltas:
        return
    unet = read_component_config(base, "unet", revision)
    for layer in config.layers:
        inner = _layer_width(unet, layer)
        if inner is None:
            raise refuse(f"its layer `{layer}` is not a cross-attention layer of the base's UNet")
        cross = _cross_width(unet, layer) if layer.endswith("attn2") else inner
        wanted = {"to_q": (inner, inner), "to_k": (inner, cross), "to_v": (inner, cross), "to_out.0": (inner, inner)}
        for proj in CD_SCOPES[config.cd_scope]:
            shape = shapes.get(f"{layer}.{proj}.delta")
            if shape is None:  # low-rank factors: up [out, r] @ down [r, in]
                shape = (shapes[f"{layer}.{proj}.delta_up"][0], shapes[f"{layer}.{proj}.delta_down"][1])
            if shape != wanted[proj]:
                raise refuse(f"its delta for `{layer}.{proj}` is {shape}, the base's weight there is {wanted[proj]}")


def check_subject(source: str | Path, base: str | Path | None = None, revision: str | None = None) -> None:
    """Both checks for a local subject (folder or file); ``base`` None checks the files only."""
    found = check_subject_files(source)
    if found is not None and base is not None:
        check_subject_fits_base(source, base, *found, revision=revision)
