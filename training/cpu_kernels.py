"""Which CPU kernel runs a frozen UNet's convolutions on small feature maps during training.

PyTorch sends a float32 3x3 convolution on the CPU to oneDNN, which reorders the weight into its blocked layout on
every call, forward and backward. For a large frozen weight on a small map -- SD 1.5's 1280-channel 3x3 convolutions
on the 4x4 and 8x8 latents of a 256 px step, 14 + 11 of them per forward -- that reorder costs more than the
arithmetic. PyTorch's own im2col + GEMM kernel (``thnn_conv2d``, whose backward is ``_slow_conv2d_backward``) reads
the weight as it lies. Measured on this project's CPU (AMD EPYC, AVX2, 1 thread; forward + input-gradient backward,
batch 2, frozen weight, process CPU time):

=================  ========  =========
conv               oneDNN    im2col
=================  ========  =========
1280->1280 @ 4x4   190 ms    83 ms
2560->1280 @ 4x4   394 ms    207 ms
1280->1280 @ 8x8   237 ms    153 ms
2560->1280 @ 8x8   498 ms    358 ms
640->640 @ 16x16   117 ms    175 ms
320->320 @ 32x32   111 ms    149 ms
=================  ========  =========

so only maps of at most :data:`MAX_PIXELS` pixels with a weight of at least :data:`MIN_WEIGHT_COLUMNS` input columns
(``in_channels * kh * kw``) switch; everything else, every GPU tensor and anything under autocast (where the
dispatcher chooses the dtype) keeps PyTorch's choice. Both kernels compute the same sums in another order: outputs
differ by float32 round-off only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

MAX_PIXELS = 8 * 8
MIN_WEIGHT_COLUMNS = 640 * 9


def _pair(value) -> tuple[int, int] | None:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    return None  # "same" / "valid" and anything else: PyTorch's own path


def im2col_conv2d(args, kwargs) -> torch.Tensor | None:
    """``F.conv2d(*args, **kwargs)`` through ``thnn_conv2d`` when it is the faster kernel (module docstring), else None."""
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    given = dict(zip(names, args), **kwargs)
    x, weight = given.get("input"), given.get("weight")
    bias = given.get("bias")
    stride, padding = _pair(given.get("stride", 1)), _pair(given.get("padding", 0))
    if (x is None or weight is None or stride is None or padding is None or _pair(given.get("dilation", 1)) != (1, 1)
            or given.get("groups", 1) != 1 or x.dim() != 4 or x.device.type != "cpu"
            or x.dtype != torch.float32 or weight.dtype != torch.float32 or (bias is not None and bias.dtype != torch.float32)
            or torch.is_autocast_enabled("cpu") or x.shape[-1] * x.shape[-2] > MAX_PIXELS
            or weight[0].numel() < MIN_WEIGHT_COLUMNS):
        return None
    return torch._C._nn.thnn_conv2d(x, weight, tuple(weight.shape[-2:]), bias, stride, padding)


class SmallMapConvolutions(TorchFunctionMode):
    """Inside the ``with`` block, qualifying ``F.conv2d`` calls run the im2col kernel; autograd records its backward."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d:
            out = im2col_conv2d(args, kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


def small_map_convolutions(device: torch.device):
    """The context the training step's UNet forward runs in: :class:`SmallMapConvolutions` on a CPU, nothing else
    elsewhere (a GPU keeps its own kernels and pays no per-call Python dispatch)."""
    from contextlib import nullcontext

    return SmallMapConvolutions() if torch.device(device).type == "cpu" else nullcontext()
