"""Which CPU kernel runs a frozen UNet's convolutions on small feature maps during training.

PyTorch sends a float32 3x3 convolution on the CPU to oneDNN, which reorders the weight into its blocked layout on
every call, forward and backward. For a large frozen weight on a small map -- SD 1.5's 1280-channel 3x3 convolutions
on the 4x4 and 8x8 latents of a 256 px step, 14 + 11 of them per forward -- that reorder costs more than the
arithmetic. Written as one matrix product over the whole batch (``F.unfold`` of the input, then ``W @ columns`` with
the weight as it lies), the same convolution reads the weight once and gives the GEMM ``batch * pixels`` columns
instead of PyTorch's own im2col kernel (``thnn_conv2d``), which runs one product per image. Measured on this
project's CPU (AMD EPYC, AVX2, 1 thread, nothing else running; forward + input-gradient backward, batch 2, frozen
weight, best of three, process CPU time; ``python -m subjectgen_training.benchmarks.conv_kernels``):

=========================  ========  ============  ===============
conv                       oneDNN    thnn im2col   one GEMM (ours)
=========================  ========  ============  ===============
1280->1280 @ 4x4           116 ms    49 ms         37 ms
2560->1280 @ 4x4           224 ms    103 ms        76 ms
1280->1280 @ 8x8           172 ms    107 ms        106 ms
2560->1280 @ 8x8           344 ms    239 ms        218 ms
1920->1280 @ 8x8           260 ms    175 ms        154 ms
1280->1280 @ 8x8 stride 2  133 ms    50 ms         36 ms
640->640 @ 16x16           87 ms     105 ms        109 ms
320->320 @ 32x32           82 ms     95 ms         136 ms
=========================  ========  ============  ===============

so only maps of at most :data:`MAX_PIXELS` pixels with a weight of at least :data:`MIN_WEIGHT_COLUMNS` input columns
(``in_channels * kh * kw``) switch; everything else, every GPU tensor and anything under autocast (where the
dispatcher chooses the dtype) keeps PyTorch's choice. The kernels compute the same sums in another order: outputs
differ by float32 round-off only. Autograd differentiates the product and ``unfold`` (whose backward is ``fold``), so
a trainable weight or bias would get its gradient too.
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


def small_map_conv2d(args, kwargs) -> torch.Tensor | None:
    """``F.conv2d(*args, **kwargs)`` through :func:`batch_gemm_conv2d` when it is the faster kernel (module
    docstring), else None."""
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
    return batch_gemm_conv2d(x, weight, bias, stride, padding)


class SmallMapConvolutions(TorchFunctionMode):
    """Inside the ``with`` block, qualifying ``F.conv2d`` calls run :func:`batch_gemm_conv2d`; autograd records its
    backward."""

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
