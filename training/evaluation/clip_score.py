"""CLIP embeddings for the text-image and image-image scores (Radford et al. 2021; CLIPScore, Hessel et al. 2021).

Prompt fidelity is the cosine similarity between a generated image's CLIP embedding and its prompt's (with the
subject token replaced by a plain phrase); subject fidelity in CLIP space is the mean cosine similarity to the
reference photos (the CLIP-T / CLIP-I scores of Custom Diffusion and Celeb Basis). The model is built once and
reused. Preprocessing is CLIP's own — resize the short side (bicubic), centre crop, normalise — written with PIL and
numpy, so no torchvision is needed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from subjectgen_diffusers.errors import SubjectgenError

logger = logging.getLogger(__name__)

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipModelError(SubjectgenError):
    """The CLIP model cannot be loaded; the message says what to pass instead."""


def _features(output):
    """transformers 5 returns a model output whose ``pooler_output`` is projected; 4.x returned the tensor."""
    return getattr(output, "pooler_output", output)


def _normalisation(source: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std from the model's ``preprocessor_config.json`` when it has one, else OpenAI CLIP's."""
    path = Path(source) / "preprocessor_config.json"
    if not path.is_file() and not Path(source).exists():
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source, "preprocessor_config.json"))
        except Exception:  # noqa: BLE001 - any Hub failure falls back to CLIP's published constants
            return CLIP_MEAN, CLIP_STD
    if not path.is_file():
        return CLIP_MEAN, CLIP_STD
    config = json.loads(path.read_text(encoding="utf-8"))
    return tuple(config.get("image_mean", CLIP_MEAN)), tuple(config.get("image_std", CLIP_STD))


def preprocess(images: list[Image.Image], size: int, mean, std):
    """CLIP's preprocessing: short side to ``size`` (bicubic), centre crop ``size``², scale to [0, 1], normalise."""
    import torch

    arrays = []
    for image in images:
        image = image.convert("RGB")
        scale = size / min(image.size)
        new_size = (max(size, round(image.width * scale)), max(size, round(image.height * scale)))
        image = image.resize(new_size, Image.Resampling.BICUBIC)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        image = image.crop((left, top, left + size, top + size))
        arrays.append((np.asarray(image, dtype=np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


class ClipEmbedder:
    """A CLIP model and tokenizer loaded once from a Hub id or a local folder; returns unit-norm embeddings."""

    def __init__(self, source: str = DEFAULT_CLIP_MODEL, device: str = "cpu", batch_size: int = 16):
        import torch
        from transformers import CLIPModel, CLIPTokenizer

        try:
            self.model = CLIPModel.from_pretrained(source).to(device).eval()
            self.tokenizer = CLIPTokenizer.from_pretrained(source)
        except (OSError, ValueError) as error:
            raise ClipModelError(
                f"cannot load the CLIP model {source!r} ({error}). Pass a Hub id such as {DEFAULT_CLIP_MODEL} or "
                "openai/clip-vit-large-patch14, a local folder saved with save_pretrained, or `none` to skip CLIP."
            ) from error
        self.source = source
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.image_size = self.model.config.vision_config.image_size
        self.max_length = self.model.config.text_config.max_position_embeddings
        self.mean, self.std = _normalisation(source)

    def embed_images(self, images: list[Image.Image]):
        """Unit-norm image embeddings ``[n, d]`` (float32, CPU)."""
        import torch

        chunks = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                pixels = preprocess(images[start : start + self.batch_size], self.image_size, self.mean, self.std)
                pixels = pixels.to(self.device, self.model.dtype)
                chunks.append(_features(self.model.get_image_features(pixel_values=pixels)).float())
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1).cpu()

    def embed_texts(self, texts: list[str]):
        """Unit-norm text embeddings ``[n, d]`` (float32, CPU); texts longer than CLIP's context are truncated."""
        import torch

        chunks = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(
                    texts[start : start + self.batch_size], padding=True, truncation=True,
                    max_length=self.max_length, return_tensors="pt",
                ).to(self.device)
                chunks.append(_features(self.model.get_text_features(**tokens)).float())
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1).cpu()
