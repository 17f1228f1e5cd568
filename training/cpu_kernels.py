"""Which CPU kernel runs a frozen UNet's 3x3 convolutions on small feature maps during training.

PyTorch sends a float32 3x3 convolution on the CPU to oneDNN, which reorders the weight into its blocked layout on
every call, forward and backward. For a large frozen weight on a small map -- SD 1.5's 1280-channel convolutions on
the 4x4, 8x8 and 16x16 latents -- that reorder costs more than it saves. Two im2col kernels read the weight as it
lies instead: for the smallest maps, one matrix product over the whole batch (:func:`batch_gemm_conv2d`: ``F.unfold``
of the input, then ``W @ columns`` with ``batch * pixels`` columns); for maps up to 16x16, PyTorch's own im2col
kernel (``thnn_conv2d``, one product per image), whose columns stay small enough to keep in cache. Measured on this
project's CPU (AMD EPYC, AVX2, 1 thread, nothing else running; forward + input-gradient backward, batch 2, frozen
weight, best of three, process CPU time; ``python -m subjectgen_training.benchmarks.conv_kernels``; the chosen
kernel starred):

===========================  ========  ============  ===============
conv (output map)            oneDNN    thnn im2col   one GEMM (ours)
===========================  ========  ============  ===============
1280->1280 @ 4x4             108 ms    43 ms         33 ms *
2560->1280 @ 4x4             215 ms    100 ms        72 ms *
1280->1280 @ 8x8             165 ms    104 ms        96 ms *
2560->1280 @ 8x8             326 ms    222 ms        199 ms *
1920->1280 @ 8x8             248 ms    156 ms        144 ms *
1280->1280 @ 4x4 (stride 2)  127 ms    46 ms         34 ms *
1280->1280 @ 8x8 (stride 2)  184 ms    107 ms        97 ms *
640->640 @ 8x8 (stride 2)    30 ms     27 ms         26 ms *
2560->1280 @ 16x16           813 ms    714 ms *      804 ms
1920->1280 @ 16x16           610 ms    526 ms *      601 ms
1280->1280 @ 16x16           410 ms    338 ms *      348 ms
1920->640 @ 16x16            253 ms *  261 ms        342 ms
1280->640 @ 16x16            170 ms *  174 ms        187 ms
960->640 @ 16x16             128 ms *  129 ms        140 ms
640->640 @ 16x16             87 ms *   86 ms         93 ms
640->640 @ 16x16 (stride 2)  96 ms *   94 ms         95 ms
320->320 @ 32x32             81 ms *   88 ms         105 ms
1280->1280 @ 32x32           1340 ms * 1474 ms       1566 ms
===========================  ========  ============  ===============

(the 16x16 rows from a re-run with five repeats; over four to five runs, with 640 output channels the choice swings --
1920->640 took 253-314 ms with oneDNN, 261-291 ms with thnn -- so those keep PyTorch's choice, while with 1280 output
channels thnn won 1280->1280 in 5 of 5 runs, 1920->1280 in 4 of 4 and 2560->1280 in 3 of 4, by 12-17 %), so an
output map of at most :data:`BATCH_GEMM_MAX_PIXELS` pixels with a weight of at least :data:`BATCH_GEMM_MIN_COLUMNS`
input columns (``in_channels * kh * kw``) takes the one product, one of at most :data:`PER_IMAGE_MAX_PIXELS` pixels
with a weight of at least :data:`PER_IMAGE_MIN_WEIGHT` values (1280 -> 1280 channels and up) takes ``thnn_conv2d``;
everything else, every GPU tensor and anything under autocast (where the dispatcher chooses the dtype) keeps
PyTorch's choice. The kernels compute the same sums in another order: outputs differ by float32 round-off only.
Autograd differentiates all three, so a trainable weight or bias would get its gradient too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

BATCH_GEMM_MAX_PIXELS = 8 * 8
BATCH_GEMM_MIN_COLUMNS = 640 * 9
PER_IMAGE_MAX_PIXELS = 16 * 16
PER_IMAGE_MIN_WEIGHT = 1280 * 1280 * 9


def _pair(value) -> tuple[int, int] | None:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    return None  # "same" / "valid" and anything else: PyTorch's own path


def batch_gemm_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
                      padding: tuple[int, int]) -> torch.Tensor:
    """``F.conv2d`` (dilation 1, one group) as one product ``W[out, in*kh*kw] @ columns[in*kh*kw, batch*pixels]``."""
    batch, channels, height, width = x.shape
    kernel = tuple(weight.shape[-2:])
    out_h = (height + 2 * padding[0] - kernel[0]) // stride[0] + 1
    out_w = (width + 2 * padding[1] - kernel[1]) // stride[1] + 1
    columns = F.unfold(x, kernel, padding=padding, stride=stride)  # [batch, in*kh*kw, pixels]
    columns = columns.transpose(0, 1).reshape(columns.shape[1], batch * out_h * out_w)
    flat = weight.reshape(weight.shape[0], -1)
    out = torch.addmm(bias[:, None], flat, columns) if bias is not None else flat @ columns
    return out.view(-1, batch, out_h, out_w).transpose(0, 1).contiguous()


def per_image_gemm_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """``F.conv2d`` (dilation 1, one group) through PyTorch's im2col kernel: one product per image."""
    return torch._C._nn.thnn_conv2d(x, weight, tuple(weight.shape[-2:]), bias, stride, padding)


def small_map_conv2d(args, kwargs) -> torch.Tensor | None:
    """``F.conv2d(*args, **kwargs)`` through the faster im2col kernel where there is one (module docstring), else
    None."""
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    given = dict(zip(names, args), **kwargs)
    x, weight = given.get("input"), given.get("weight")
    bias = given.get("bias")
    stride, padding = _pair(given.get("stride", 1)), _pair(given.get("padding", 0))
    if (x is None or weight is None or stride is None or padding is None or _pair(given.get("dilation", 1)) != (1, 1)
            or given.get("groups", 1) != 1 or x.dim() != 4 or weight.dim() != 4 or x.device.type != "cpu"
            or x.dtype != torch.float32 or weight.dtype != torch.float32 or (bias is not None and bias.dtype != torch.float32)
            or torch.is_autocast_enabled("cpu")):
        return None
    kernel = KERNELS.get(kernel_for(x.shape, weight.shape, stride, padding))
    return kernel(x, weight, bias, stride, padding) if kernel is not None else None


def kernel_for(input_shape, weight_shape, stride: tuple[int, int], padding: tuple[int, int]) -> str:
    """The name of the kernel (a key of :data:`KERNELS`, or ``"onednn"`` for PyTorch's own choice) the rule in the
    module docstring picks for a float32 CPU convolution of these shapes."""
    out_pixels = 1
    for side, pad, kernel, step in zip(input_shape[-2:], padding, weight_shape[-2:], stride):
        out_pixels *= max((side + 2 * pad - kernel) // step + 1, 0)
    columns = math.prod(weight_shape[1:])
    weight_size = columns * weight_shape[0]
    if out_pixels == 0:  # an empty or impossible output: PyTorch's own checks and error
        return "onednn"
    if out_pixels <= BATCH_GEMM_MAX_PIXELS and columns >= BATCH_GEMM_MIN_COLUMNS:
        return "batch_gemm"
    if out_pixels <= PER_IMAGE_MAX_PIXELS and weight_size >= PER_IMAGE_MIN_WEIGHT:
        return "per_image_gemm"
    return "onednn"


KERNELS = {"batch_gemm": batch_gemm_conv2d, "per_image_gemm": per_image_gemm_conv2d}


class SmallMapConvolutions(TorchFunctionMode):
    """Inside the ``with`` block, qualifying ``F.conv2d`` calls run an im2col kernel (:func:`kernel_for`); autograd
    records its backward."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d:  # torch switches the mode off inside its own handler: the kernel's ops run plainly
            out = small_map_conv2d(args, kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


def small_map_convolutions(device: torch.device):
    """The context the training step's UNet forward runs in: :class:`SmallMapConvolutions` on a CPU, nothing else
    elsewhere (a GPU keeps its own kernels and pays no per-call Python dispatch)."""
    from contextlib import nullcontext

    return SmallMapConvolutions() if torch.device(device).type == "cpu" else nullcontext()
