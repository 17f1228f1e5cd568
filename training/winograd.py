"""3x3 convolutions (stride 1, padding 1) with Winograd's minimal filtering F(2x2, 3x3), for frozen weights on a CPU.

Each 2x2 block of output pixels is computed from a 4x4 tile of the input in a transformed domain: the tiles and the
3x3 kernels are taken through fixed 4x4 transforms (entries 0, +-1, +-1/2), multiplied there as 16 matrix products of
``[out, in] x [in, tiles]``, and taken back. That is 16 multiplications per output block and input channel instead
of 36 for the direct sum, so the products do 2.25x fewer floating-point operations; the transforms of the input and
of the output are element-wise passes. Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016)
give the transforms; cuDNN and oneDNN ship the same algorithm, oneDNN only for AVX-512 CPUs.

The input gradient of such a convolution is the same convolution of the output gradient with the kernel flipped and
its channels swapped, whose transform is the forward one with its tile indices 0 and 3 swapped and each ``[out, in]``
matrix transposed, so the backward transforms the same weight again. No transform is kept between the two: those
of SD 1.5's convolutions hold 16/9 of their weights' size, which would raise the step's peak memory by gigabytes,
while one transform into a reused :class:`Workspace` is a memory-bound pass of about 1.7 ms per million weight
values. The kernel is only differentiated with respect to its input: it serves weights that do not train
(:mod:`subjectgen_training.cpu_kernels` checks that).

The results equal ``F.conv2d``'s up to float32 round-off (the sums run in another order).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# G of F(2x2, 3x3): the kernel transform U = G g G^T, written as one [16, 9] matrix acting on the 9 kernel taps
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
# tile index k = 4a + b of the flipped kernel's transform, read from the forward transform: a, b each swap 0 and 3
_SWAP = (3, 1, 2, 0)
_FLIPPED = tuple(4 * _SWAP[a] + _SWAP[b] for a in range(4) for b in range(4))


def supports(input_shape, weight_shape) -> bool:
    """Whether :func:`winograd_conv2d` can compute this stride-1, padding-1 convolution: a 3x3 kernel on an even map."""
    return (tuple(weight_shape[-2:]) == (3, 3) and len(input_shape) == 4 and input_shape[-2] % 2 == 0
            and input_shape[-1] % 2 == 0 and input_shape[-2] > 0 and input_shape[-1] > 0)


def transform_weight(weight: torch.Tensor, workspace: Workspace | None = None) -> torch.Tensor:
    """``U = G g G^T`` of every ``[out, in]`` kernel ``g``: ``[16, out, in]``, written into ``workspace`` when given
    (then valid until the workspace's next use)."""
    g = torch.tensor(_G, dtype=weight.dtype, device=weight.device)
    taps = torch.kron(g, g)  # [16, 9]
    shape = (16, weight.shape[0], weight.shape[1])
    out = workspace.take(shape, weight.dtype, weight.device) if workspace is not None else torch.empty(
        shape, dtype=weight.dtype, device=weight.device)
    return torch.mm(taps, weight.detach().reshape(-1, 9).t(), out=out.view(16, -1)).view(shape)


class Workspace:
    """One buffer that every weight transform of a run is written into in turn. A transform of SD 1.5's large
    weights is 16/9 of the weight's size (up to ~200 MB); allocated afresh on each call, its pages are faulted in
    and zeroed by the kernel every time, which costs 3.5 times the transform itself."""

    def __init__(self):
        self._buffer: torch.Tensor | None = None

    def take(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        size = math.prod(shape)
        if (self._buffer is None or self._buffer.numel() < size or self._buffer.dtype != dtype
                or self._buffer.device != torch.device(device)):
            self._buffer = None  # free the old buffer before allocating the larger one
            self._buffer = torch.empty(size, dtype=dtype, device=device)
        return self._buffer[:size].view(shape)


def _transform_input(x: torch.Tensor) -> torch.Tensor:
    """``B^T d B`` of every 4x4 input tile (stride 2, zero padding 1): ``[16, in, batch * tiles]``."""
    batch, channels, height, width = x.shape
    rows, cols = height // 2, width // 2
    padded = F.pad(x, (1, 1, 1, 1)).transpose(0, 1)  # [in, batch, H + 2, W + 2]
    by_row = torch.empty(4, channels, batch, rows, width + 2, dtype=x.dtype, device=x.device)
    line = lambda k: padded[:, :, k:k + 2 * rows:2]  # noqa: E731 -- row k of every tile
    torch.sub(line(0), line(2), out=by_row[0])
    torch.add(line(1), line(2), out=by_row[1])
    torch.sub(line(2), line(1), out=by_row[2])
    torch.sub(line(1), line(3), out=by_row[3])
    tiles = torch.empty(4, 4, channels, batch, rows, cols, dtype=x.dtype, device=x.device)
    column = lambda k: by_row[..., k:k + 2 * cols:2]  # noqa: E731 -- column k of every tile
    torch.sub(column(0), column(2), out=tiles[:, 0])
    torch.add(column(1), column(2), out=tiles[:, 1])
    torch.sub(column(2), column(1), out=tiles[:, 2])
    torch.sub(column(1), column(3), out=tiles[:, 3])
    return tiles.view(16, channels, batch * rows * cols)


def _transform_output(products: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """``A^T m A`` of every tile's 4x4 products, laid out as the ``[batch, out, height, width]`` image."""
    rows, cols = height // 2, width // 2
    m = products.view(4, 4, -1, batch, rows, cols)
    half = torch.empty(2, 4, m.shape[2], batch, rows, cols, dtype=m.dtype, device=m.device)
    torch.add(m[0], m[1], out=half[0]).add_(m[2])
    torch.sub(m[1], m[2], out=half[1]).sub_(m[3])
    out = torch.empty(batch, m.shape[2], height, width, dtype=m.dtype, device=m.device)
    blocks = out.view(batch, m.shape[2], rows, 2, cols, 2).permute(3, 5, 1, 0, 2, 4)  # [2, 2, out, batch, rows, cols]
    torch.add(half[:, 0], half[:, 1], out=blocks[:, 0]).add_(half[:, 2])
    torch.sub(half[:, 1], half[:, 2], out=blocks[:, 1]).sub_(half[:, 3])
    return out


def _convolve(x: torch.Tensor, transformed: torch.Tensor, bias: torch.Tensor | None, flipped: bool) -> torch.Tensor:
    batch, _, height, width = x.shape
    tiles = _transform_input(x)
    out_channels = transformed.shape[2] if flipped else transformed.shape[1]
    products = torch.empty(16, out_channels, tiles.shape[2], dtype=x.dtype, device=x.device)
    if flipped:  # the kernel flipped and transposed: tile k reads the forward's tile _FLIPPED[k], transposed
        for k, source in enumerate(_FLIPPED):
            torch.mm(transformed[source].t(), tiles[k], out=products[k])
    else:
        torch.bmm(transformed, tiles, out=products)
    if bias is not None:  # every output pixel of a tile reads the product at tile index (1, 1) with weight 1
        products[5] += bias.detach()[:, None]
    return _transform_output(products, batch, height, width)


class _WinogradConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, workspace):
        ctx.save_for_backward(weight)  # autograd refuses the backward if the weight changed in place meanwhile
        ctx.workspace = workspace
        return _convolve(x, transform_weight(weight, workspace), bias, flipped=False)

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        (weight,) = ctx.saved_tensors  # transformed again: keeping every transform until the backward costs memory
        grad_input = _convolve(grad.contiguous(), transform_weight(weight, ctx.workspace), None, flipped=True)
        return grad_input, None, None, None


def winograd_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    workspace: Workspace | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride=1, padding=1)`` for a 3x3 ``weight`` (see :func:`supports`),
    differentiable with respect to ``x`` only: the weight and bias get no gradient. The weight's transform goes
    into ``workspace`` (a fresh buffer without one), forward and backward."""
    return _WinogradConv2d.apply(x, weight, bias, workspace)
