"""Training images encoded by the VAE once: photos (each with its horizontal flip and Custom Diffusion's
random-rescale variants) and regularisation images, stored as the latent distribution's mean and std so every
step still draws a fresh ``latent_dist.sample()`` without running the VAE again.

Random rescale (Kumari et al., CVPR 2023, as in diffusers' ``train_custom_diffusion.py``): with probability 2/3
the photo shrinks to a random size in ``[R/3, R]`` and sits at a random place on a mid-grey canvas (the loss
mask covers only the photo, and prompts of small ones say "a far away"/"very small"); otherwise it grows to
``[1.2R, 1.4R]`` and is randomly cropped ("zoomed in"/"close up"). Here each photo and flip gets
``rescale_variants`` such draws, fixed by the seed, encoded once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

FAR_PREFIXES = ("a far away ", "very small ")
NEAR_PREFIXES = ("zoomed in ", "close up ")


@dataclass
class EncodedImages:
    """``mean``/``std``: ``[N, 4, h, w]`` (already times the VAE scaling factor); ``weight``: ``[N, 1, h, w]``
    loss weights (rescale mask x optional face mask); ``source``: photo index; ``prefix``: prompt prefix."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    source: list[int]
    prefix: list[str]
    flipped: list[bool]
    plain: list[bool]  # the un-rescaled view (used for the photo-loss measurement)

    def __len__(self) -> int:
        return self.mean.shape[0]

    def sample(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        mean, std = self.mean[index], self.std[index]
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return mean + std * noise


def square_resize(image: Image.Image, size: int, resample=Image.BICUBIC) -> Image.Image:
    """Centre-crop to a square and resize to ``size`` (the photos are portraits; ``prepare`` already squares them)."""
    return ImageOps.fit(image, (size, size), method=resample)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """``[C, H, W]`` in [-1, 1] for RGB, [0, 1] for a mask."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    if array.ndim == 2:
        return torch.from_numpy(array)[None]
    return torch.from_numpy(array).permute(2, 0, 1) * 2.0 - 1.0


def rescale(image: torch.Tensor, mask: torch.Tensor, resolution: int, rng: random.Random):
    """One random-rescale draw of a ``[C, R, R]`` image and its ``[1, R, R]`` face weight.

    Returns ``(image, loss_mask, face_weight, prefix)``; the loss mask is 1 where the photo is."""
    if rng.random() < 2 / 3:
        scale = rng.randint(resolution // 3, resolution)
    else:
        scale = rng.randint(int(1.2 * resolution), int(1.4 * resolution))
    scale -= scale % 8 if scale > 8 else 0
    resized = torch.nn.functional.interpolate(image[None], size=(scale, scale), mode="bilinear", antialias=True, align_corners=False)[0]
    mask_resized = torch.nn.functional.interpolate(mask[None], size=(scale, scale), mode="bilinear", align_corners=False)[0]
    if scale <= resolution:
        canvas = torch.zeros_like(image)
        face = torch.zeros_like(mask)
        loss_mask = torch.zeros_like(mask)
        top = rng.randint(0, resolution - scale) // 8 * 8
        left = rng.randint(0, resolution - scale) // 8 * 8
        canvas[:, top : top + scale, left : left + scale] = resized
        face[:, top : top + scale, left : left + scale] = mask_resized
        loss_mask[:, top : top + scale, left : left + scale] = 1.0
        prefix = rng.choice(FAR_PREFIXES) if scale < 0.6 * resolution else ""
        return canvas, loss_mask, face, prefix
    top = rng.randint(0, scale - resolution)
    left = rng.randint(0, scale - resolution)
    crop = resized[:, top : top + resolution, left : left + resolution]
    face = mask_resized[:, top : top + resolution, left : left + resolution]
    return crop, torch.ones_like(mask), face, rng.choice(NEAR_PREFIXES)


def build_views(photos, resolution: int, *, random_rescale: bool, variants: int, seed: int, face_masks: bool):
    """Pixel views of every photo: plain, flipped and (optionally) rescaled; with loss weights at pixel size.

    Returns ``(images [N,3,R,R], loss_masks [N,1,R,R], faces [N,1,R,R] or None, sources, prefixes, flipped,
    plain)``."""
    rng = random.Random(seed)
    images, masks, faces, sources, prefixes, flipped, plain = [], [], [], [], [], [], []
    for index, photo in enumerate(photos):
        image = to_tensor(square_resize(photo.image, resolution))
        face = to_tensor(square_resize(photo.mask, resolution, Image.BILINEAR)) if photo.mask is not None else torch.ones(1, resolution, resolution)
        for flip in (False, True):
            view, view_face = (image.flip(-1), face.flip(-1)) if flip else (image, face)
            draws = [(view, torch.ones_like(view_face), view_face, "")]
            if random_rescale:
                draws += [rescale(view, view_face, resolution, rng) for _ in range(variants)]
            for number, (pixels, loss_mask, face_weight, prefix) in enumerate(draws):
                plain.append(number == 0)
                images.append(pixels)
                masks.append(loss_mask)
                faces.append(face_weight)
                sources.append(index)
                prefixes.append(prefix)
                flipped.append(flip)
    faces_out = torch.stack(faces) if face_masks else None
    return torch.stack(images), torch.stack(masks), faces_out, sources, prefixes, flipped, plain


ENCODE_PIXELS = 8 * 512 * 512  # pixels per VAE batch: 8 images at 512 px, 2 at 1024 px (SDXL)


@torch.no_grad()
def encode_images(vae, images: torch.Tensor, batch_size: int | None = None, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE-encode ``[N, 3, R, R]`` in [-1, 1]; return the scaled latent mean and std (float32, on the CPU).

    ``batch_size`` defaults to :data:`ENCODE_PIXELS` worth of images: the float32 encoder's activations grow with the
    pixels, and the UNet is already on the device while the cache is built."""
    from tqdm.auto import tqdm

    batch_size = batch_size or max(1, ENCODE_PIXELS // (images.shape[-1] * images.shape[-2]))
    device, dtype = vae.device, vae.dtype
    factor = vae.config.scaling_factor
    means, stds = [], []
    for start in tqdm(range(0, len(images), batch_size), desc="encoding images", disable=not progress, leave=False):
        dist = vae.encode(images[start : start + batch_size].to(device, dtype)).latent_dist
        means.append((dist.mean * factor).float().cpu())
        stds.append((dist.std * factor).float().cpu())
    return torch.cat(means), torch.cat(stds)


def downsample_weight(weight: torch.Tensor, latent_size: int) -> torch.Tensor:
    return torch.nn.functional.interpolate(weight, size=(latent_size, latent_size), mode="area")


def encode_photo_views(vae, photos, resolution: int, *, random_rescale: bool, variants: int, seed: int,
                       face_masks: bool = False, background_weight: float = 1.0, progress: bool = True) -> EncodedImages:
    """Encode every view of the photos once; the loss weight is the rescale mask times the face weighting."""
    images, masks, faces, sources, prefixes, flipped, plain = build_views(
        photos, resolution, random_rescale=random_rescale, variants=variants, seed=seed, face_masks=face_masks
    )
    mean, std = encode_images(vae, images, progress=progress)
    latent_size = mean.shape[-1]
    weight = (downsample_weight(masks, latent_size) > 0.5).float()
    if faces is not None:
        face = downsample_weight(faces, latent_size)
        weight = weight * (background_weight + (1.0 - background_weight) * face)
    return EncodedImages(mean, std, weight, sources, prefixes, flipped, plain)


def encode_regularization(vae, photos, resolution: int, progress: bool = True) -> EncodedImages:
    """Regularisation images and their flips, encoded once (loss weight 1 everywhere)."""
    images, sources, flipped = [], [], []
    for index, photo in enumerate(photos):
        image = to_tensor(square_resize(photo.image, resolution))
        for flip in (False, True):
            images.append(image.flip(-1) if flip else image)
            sources.append(index)
            flipped.append(flip)
    mean, std = encode_images(vae, torch.stack(images), progress=progress)
    weight = torch.ones(mean.shape[0], 1, *mean.shape[-2:])
    return EncodedImages(mean, std, weight, sources, [""] * len(sources), flipped, [True] * len(sources))
