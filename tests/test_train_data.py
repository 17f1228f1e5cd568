"""Cached training latents: flips, Custom Diffusion's random-rescale views with their loss masks, face-mask
weighting of prepared photos, and the start-token K/V taking no gradient."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from subjectgen_training.data.latent_cache import build_views, encode_images, encode_photo_views, rescale, to_tensor
from subjectgen_training.data.photos import Photo


@pytest.fixture
def photos(astronaut_image):
    mask = Image.new("L", astronaut_image.size, 0)
    mask.paste(255, (128, 0, 384, 256))  # the face region of a prepared photo
    return [Photo(path=None, image=astronaut_image, mask=mask), Photo(path=None, image=astronaut_image.rotate(10))]


def test_every_photo_gets_plain_flipped_and_rescaled_views(photos):
    images, masks, faces, sources, prefixes, flipped, plain = build_views(
        photos, 64, random_rescale=True, variants=3, seed=0, face_masks=True)
    assert images.shape == (2 * 2 * 4, 3, 64, 64) and masks.shape == faces.shape == (16, 1, 64, 64)
    assert sources == [0] * 8 + [1] * 8 and sum(plain) == 4 and sum(flipped) == 8
    torch.testing.assert_close(images[4], images[0].flip(-1))  # the flipped plain view
    for i in range(16):
        if prefixes[i] in ("a far away ", "very small "):
            assert masks[i].mean() < 0.36  # shrunk below 0.6 R: the photo covers < 36 % of the canvas
        if masks[i].min() == 0:  # zoomed out: the loss mask is exactly where the photo was pasted
            ys, xs = torch.nonzero(masks[i, 0], as_tuple=True)
            assert torch.all(images[i][:, masks[i, 0] == 0] == 0)  # mid-grey canvas elsewhere
            assert (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1) == int(masks[i].sum())


def test_rescale_is_seeded_and_covers_both_directions():
    image, mask = torch.rand(3, 64, 64) * 2 - 1, torch.ones(1, 64, 64)
    draws = [rescale(image, mask, 64, random.Random(s)) for s in range(30)]
    assert any(d[3] in ("zoomed in ", "close up ") for d in draws)
    assert any(float(d[1].mean()) < 1 for d in draws)
    again = rescale(image, mask, 64, random.Random(7))
    assert torch.equal(again[0], draws[7][0]) and again[3] == draws[7][3]


def test_cached_latents_equal_a_direct_vae_encode(tiny_pipe, photos):
    encoded = encode_photo_views(tiny_pipe.vae, photos, 64, random_rescale=False, variants=1, seed=0, progress=False)
    assert len(encoded) == 4 and encoded.mean.shape == (4, 4, 8, 8)
    image = to_tensor(photos[0].image.resize((64, 64), Image.BICUBIC).crop((0, 0, 64, 64)))  # square photo
    with torch.no_grad():
        dist = tiny_pipe.vae.encode(image.flip(-1)[None]).latent_dist
    torch.testing.assert_close(encoded.mean[1], dist.mean[0] * 0.18215, atol=2e-2, rtol=0)
    torch.testing.assert_close(encoded.std[1], dist.std[0] * 0.18215, atol=2e-3, rtol=0)
    draw = encoded.sample(torch.tensor([1, 1]), torch.Generator().manual_seed(0))
    assert not torch.equal(draw[0], draw[1])  # a fresh latent_dist.sample() per use


def test_face_mask_weights_the_loss(tiny_pipe, photos):
    encoded = encode_photo_views(tiny_pipe.vae, photos, 64, random_rescale=False, variants=1, seed=0,
                                 face_masks=True, background_weight=0.2, progress=False)
    face_view = encoded.weight[0, 0]
    torch.testing.assert_close(face_view[:3, 3:5], torch.ones(3, 2), atol=1e-3, rtol=0)  # inside the face
    torch.testing.assert_close(face_view[6:, :], torch.full((2, 8), 0.2), atol=1e-3, rtol=0)  # background
    assert encoded.weight[2].eq(1).all()  # the unprepared photo keeps a uniform loss


def test_encode_images_batches_match(tiny_pipe):
    images = torch.rand(5, 3, 64, 64) * 2 - 1
    whole = encode_images(tiny_pipe.vae, images, batch_size=5, progress=False)
    split = encode_images(tiny_pipe.vae, images, batch_size=2, progress=False)
    torch.testing.assert_close(whole[0], split[0], atol=1e-5, rtol=1e-5)


def test_start_token_key_value_take_no_gradient(tiny_pipe):
    """Custom Diffusion detaches K/V at the start token: the text states at position 0 get no gradient."""
    from subjectgen_diffusers.families import get_family
    from subjectgen_training.methods.custom_diffusion import CustomDiffusionDeltas

    tiny_pipe.unet.requires_grad_(False)
    deltas = CustomDiffusionDeltas("kv+q+out")
    deltas.attach(tiny_pipe.unet, get_family("sd1").cd_layers(tiny_pipe.unet))
    states = torch.randn(2, 77, 32, requires_grad=True)
    out = tiny_pipe.unet(torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), states).sample
    out.square().mean().backward()
    assert states.grad[:, 0].abs().max() == 0
    assert states.grad[:, 1:].abs().amax(dim=-1).gt(0).all()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in deltas.parameters() if p.dim() == 2)
