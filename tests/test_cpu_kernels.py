"""The training step's CPU kernel choice (subjectgen_training.cpu_kernels): large frozen 3x3 weights on small maps run
the im2col kernel, with the same values and input gradients as PyTorch's own choice; everything else is left alone."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from subjectgen_training.cpu_kernels import SmallMapConvolutions, small_map_convolutions


def conv_with_grad(conv: torch.nn.Conv2d, x: torch.Tensor, mode: bool):
    x = x.clone().requires_grad_(True)
    if mode:
        with SmallMapConvolutions():
            out = conv(x)
    else:
        out = conv(x)
    out.backward(torch.ones_like(out))
    return out, x.grad


def test_large_weight_on_small_map_takes_im2col_with_the_same_values():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(640, 8, 3, padding=1).requires_grad_(False)  # 640 * 9 input columns, as SD 1.5's 640+ ones
    for size, stride in ((4, 1), (8, 1), (8, 2)):
        conv.stride = (stride, stride)
        x = torch.randn(2, 640, size, size)
        fast, fast_grad = conv_with_grad(conv, x, mode=True)
        assert type(fast.grad_fn).__name__ == "SlowConv2DBackward0"
        stock, stock_grad = conv_with_grad(conv, x, mode=False)
        assert type(stock.grad_fn).__name__ != "SlowConv2DBackward0"
        assert fast.shape == stock.shape
        torch.testing.assert_close(fast, stock, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast_grad, stock_grad, rtol=1e-5, atol=1e-5)


def test_other_convolutions_keep_pytorchs_choice():
    torch.manual_seed(0)
    big_map = torch.randn(1, 640, 16, 16)  # more than 8x8 pixels: oneDNN is as fast or faster there
    small_weight = torch.nn.Conv2d(64, 8, 3, padding=1)  # 64 * 9 columns: nothing to save
    large = torch.nn.Conv2d(640, 8, 3, padding=1)
    with SmallMapConvolutions():
        assert type(large(big_map).grad_fn).__name__ != "SlowConv2DBackward0"
        assert type(small_weight(torch.randn(1, 64, 4, 4)).grad_fn).__name__ != "SlowConv2DBackward0"
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast picks the dtype: PyTorch's own kernel
            out = large(torch.randn(1, 640, 4, 4))
        assert out.dtype == torch.bfloat16
        same = torch.nn.Conv2d(640, 8, 3, padding="same")
        torch.testing.assert_close(same(torch.randn(1, 640, 4, 4)).shape, torch.Size([1, 8, 4, 4]))
        x = torch.randn(1, 640, 4, 4)
        torch.testing.assert_close(F.conv2d(x, large.weight, None, 1, 1), F.conv2d(x, large.weight, None, 1, 1))


def test_only_a_cpu_step_enters_the_mode():
    assert isinstance(small_map_convolutions(torch.device("cpu")), SmallMapConvolutions)
    assert not isinstance(small_map_convolutions(torch.device("meta")), SmallMapConvolutions)
