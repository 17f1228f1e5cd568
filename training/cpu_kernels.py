"""Which CPU kernel runs a frozen UNet's 3x3 convolutions during training.

PyTorch sends a float32 3x3 convolution on the CPU to oneDNN, which on this project's AVX2 CPUs computes the direct
sum and reorders the weight into its blocked layout on every call, forward and backward. Three kernels beat it at
SD's shapes:

- **Winograd F(2x2, 3x3)** (:mod:`subjectgen_training.winograd`: 2.25x fewer multiplications; oneDNN has it for
  AVX-512 only) for stride-1, padding-1 convolutions of a frozen weight with at least
  :data:`WINOGRAD_MIN_CHANNELS` input and output channels on even maps of :data:`WINOGRAD_MIN_PIXELS` to
  :data:`WINOGRAD_MAX_PIXELS` output pixels: 19-49 % faster than oneDNN there, weight transforms included. On 8x8
  maps it only ties the one product below; the toy models' 32- and 64-channel convolutions keep PyTorch's kernel.
- **One matrix product over the whole batch** (:func:`batch_gemm_conv2d`: ``F.unfold`` of the input, then
  ``W @ columns`` with ``batch * pixels`` columns) for the large weights on the smallest maps.
- **PyTorch's own im2col kernel** (``thnn_conv2d``, one product per image) for the largest weights on the maps up to
  16x16 that Winograd does not take (odd sides, strides of 2).

Measured on this project's CPU (AMD EPYC, AVX2, 1 thread, nothing else running; forward + input-gradient backward,
batch 2, frozen weight, best of three, process CPU time; ``python -m subjectgen_training.benchmarks.conv_kernels``;
the chosen kernel starred):

===========================  =======  ===========  ===============  ===============
conv (output map)            oneDNN   thnn im2col  one GEMM (ours)  Winograd (ours)
===========================  =======  ===========  ===============  ===============
1280->1280 @ 4x4             138 ms   62 ms        43 ms *          166 ms
2560->1280 @ 4x4             245 ms   106 ms       77 ms *          322 ms
1280->1280 @ 8x8             182 ms   110 ms       100 ms *         106 ms
2560->1280 @ 8x8             354 ms   271 ms       222 ms *         259 ms
1920->1280 @ 8x8             277 ms   163 ms       149 ms *         163 ms
1280->1280 @ 4x4 (stride 2)  142 ms   49 ms        36 ms *          -
1280->1280 @ 8x8 (stride 2)  206 ms   113 ms       99 ms *          -
640->640 @ 8x8 (stride 2)    36 ms    33 ms        30 ms *          -
2560->1280 @ 16x16           842 ms   737 ms       854 ms           442 ms *
1920->1280 @ 16x16           637 ms   552 ms       613 ms           324 ms *
1280->1280 @ 16x16           440 ms   347 ms       364 ms           222 ms *
1920->640 @ 16x16            261 ms   283 ms       395 ms           175 ms *
1280->640 @ 16x16            170 ms   176 ms       213 ms           118 ms *
960->640 @ 16x16             131 ms   131 ms       142 ms           87 ms *
640->640 @ 16x16             84 ms    87 ms        95 ms            63 ms *
320->640 @ 16x16             43 ms    44 ms        48 ms            34 ms *
640->640 @ 16x16 (stride 2)  97 ms *  94 ms        99 ms            -
320->320 @ 32x32             81 ms    90 ms        108 ms           57 ms *
640->320 @ 32x32             162 ms   192 ms       330 ms           116 ms *
960->320 @ 32x32             246 ms   325 ms       499 ms           156 ms *
640->640 @ 32x32             320 ms   336 ms       435 ms           196 ms *
1920->640 @ 32x32            994 ms   1281 ms      1455 ms          585 ms *
1280->1280 @ 32x32           1370 ms  1388 ms      1602 ms          746 ms *
320->320 @ 64x64             338 ms   424 ms       704 ms           275 ms *
960->320 @ 64x64             1038 ms  1477 ms      2098 ms          888 ms *
===========================  =======  ===========  ===============  ===============

So a qualifying convolution takes Winograd first; then an output map of at most :data:`BATCH_GEMM_MAX_PIXELS`
pixels with a weight of at least :data:`BATCH_GEMM_MIN_COLUMNS` input columns (``in_channels * kh * kw``) takes the one
product, one of at most :data:`PER_IMAGE_MAX_PIXELS` pixels with a weight of at least :data:`PER_IMAGE_MIN_WEIGHT`
values (1280 -> 1280 channels and up) takes ``thnn_conv2d`` (12-17 % faster than oneDNN there over five runs);
everything else, every GPU tensor and anything under autocast (where the dispatcher chooses the dtype) keeps
PyTorch's choice. The kernels compute the same sums in another order: outputs differ by float32 round-off only.
Autograd differentiates all of them; the two im2col kernels would give a trainable weight or bias its gradient too,
Winograd is chosen for frozen ones only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from subjectgen_training.winograd import Workspace, supports, winograd_conv2d

WINOGRAD_MIN_CHANNELS = 320
WINOGRAD_MIN_PIXELS = 16 * 16
WINOGRAD_MAX_PIXELS = 64 * 64
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


def small_map_conv2d(args, kwargs, workspace: Workspace | None = None) -> torch.Tensor | None:
    """``F.conv2d(*args, **kwargs)`` through the faster kernel where there is one (module docstring), else None;
    Winograd writes its weight transforms into ``workspace``."""
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
    frozen = not weight.requires_grad and (bias is None or not bias.requires_grad)
    name = kernel_for(x.shape, weight.shape, stride, padding, frozen=frozen)
    if name == "winograd":
        return winograd_conv2d(x, weight, bias, workspace)
    kernel = KERNELS.get(name)
    return kernel(x, weight, bias, stride, padding) if kernel is not None else None


def kernel_for(input_shape, weight_shape, stride: tuple[int, int], padding: tuple[int, int], *,
               frozen: bool = True) -> str:
    """The name of the kernel (``"winograd"``, a key of :data:`KERNELS`, or ``"onednn"`` for PyTorch's own choice)
    the rule in the module docstring picks for a float32 CPU convolution of these shapes; Winograd only for a
    ``frozen`` weight and bias (it computes no weight gradient)."""
    out_pixels = 1
    for side, pad, kernel, step in zip(input_shape[-2:], padding, weight_shape[-2:], stride):
        out_pixels *= max((side + 2 * pad - kernel) // step + 1, 0)
    columns = math.prod(weight_shape[1:])
    weight_size = columns * weight_shape[0]
    if out_pixels == 0:  # an empty or impossible output: PyTorch's own checks and error
        return "onednn"
    if (frozen and tuple(stride) == (1, 1) and tuple(padding) == (1, 1) and supports(input_shape, weight_shape)
            and min(weight_shape[0], weight_shape[1]) >= WINOGRAD_MIN_CHANNELS
            and WINOGRAD_MIN_PIXELS <= out_pixels <= WINOGRAD_MAX_PIXELS):
        return "winograd"
    if out_pixels <= BATCH_GEMM_MAX_PIXELS and columns >= BATCH_GEMM_MIN_COLUMNS:
        return "batch_gemm"
    if out_pixels <= PER_IMAGE_MAX_PIXELS and weight_size >= PER_IMAGE_MIN_WEIGHT:
        return "per_image_gemm"
    return "onednn"


KERNELS = {"batch_gemm": batch_gemm_conv2d, "per_image_gemm": per_image_gemm_conv2d}  # and "winograd"


class SmallMapConvolutions(TorchFunctionMode):
    """Inside the ``with`` block, qualifying ``F.conv2d`` calls run the kernel :func:`kernel_for` picks; autograd
    records its backward. Enter one instance on every step of a run: its workspace for Winograd's weight transforms
    is then allocated once."""

    def __init__(self):
        super().__init__()
        self.workspace = Workspace()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d:  # torch switches the mode off inside its own handler: the kernel's ops run plainly
            out = small_map_conv2d(args, kwargs, self.workspace)
            if out is not None:
                return out
        return func(*args, **kwargs)


def small_map_convolutions(device: torch.device):
    """The context the training steps' UNet forward runs in (create it once per run, enter it on every step):
    :class:`SmallMapConvolutions` on a CPU, nothing else elsewhere (a GPU keeps its own kernels and pays no
    per-call Python dispatch)."""
    from contextlib import nullcontext

    return SmallMapConvolutions() if torch.device(device).type == "cpu" else nullcontext()
