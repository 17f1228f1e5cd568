"""The training step's CPU kernel choice (subjectgen_training.cpu_kernels): large frozen 3x3 weights on the smallest
maps run as one matrix product over the batch, the largest on 16x16 maps through PyTorch's per-image im2col kernel,
with the same values and gradients as PyTorch's own choice; everything else is left alone."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from subjectgen_training.cpu_kernels import SmallMapConvolutions, small_map_convolutions


def backward_ops(out: torch.Tensor) -> set[str]:
    """The names of every autograd node that produced ``out``."""
    visited, todo = set(), [out.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in visited:
            visited.add(node)
            todo.extend(next_node for next_node, _ in node.next_functions)
    return {type(node).__name__ for node in visited}


def runs_as_one_product(out: torch.Tensor) -> bool:
    ops = backward_ops(out)
    return "Im2ColBackward0" in ops and ("AddmmBackward0" in ops or "MmBackward0" in ops) and not any(
        "Conv" in op for op in ops)


def runs_per_image(out: torch.Tensor) -> bool:
    ops = backward_ops(out)
    return "SlowConv2DBackward0" in ops and "ConvolutionBackward0" not in ops


def conv_with_grad(conv: torch.nn.Conv2d, x: torch.Tensor, mode: bool):
    x = x.clone().requires_grad_(True)
    if mode:
        with SmallMapConvolutions():
            out = conv(x)
    else:
        out = conv(x)
    out.backward(torch.ones_like(out))
    return out, x.grad


def test_large_weight_on_small_map_is_one_product_with_the_same_values_and_gradients():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(640, 8, 3, padding=1).requires_grad_(False)  # 640 * 9 input columns, as SD 1.5's 640+ ones
    for size, stride in ((4, 1), (8, 1), (8, 2), (7, 2), (16, 2)):  # output maps of 8x8 pixels at most
        conv.stride = (stride, stride)
        x = torch.randn(2, 640, size, size)
        fast, fast_grad = conv_with_grad(conv, x, mode=True)
        assert runs_as_one_product(fast)
        stock, stock_grad = conv_with_grad(conv, x, mode=False)
        assert not runs_as_one_product(stock)
        assert fast.shape == stock.shape and fast.is_contiguous()
        torch.testing.assert_close(fast, stock, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast_grad, stock_grad, rtol=1e-5, atol=1e-5)


def test_the_largest_weights_on_16x16_maps_run_per_image_with_the_same_values_and_gradients():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1280, 1280, 3, padding=1).requires_grad_(False)  # as SD 1.5's 1280 -> 1280 ones
    for size in (16, 12):
        x = torch.randn(2, 1280, size, size)
        fast, fast_grad = conv_with_grad(conv, x, mode=True)
        assert runs_per_image(fast) and not runs_as_one_product(fast)
        stock, stock_grad = conv_with_grad(conv, x, mode=False)
        assert not runs_per_image(stock)
        torch.testing.assert_close(fast, stock, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast_grad, stock_grad, rtol=1e-5, atol=1e-5)


def test_a_trainable_weight_and_bias_get_the_same_gradients_and_no_bias_works():
    torch.manual_seed(0)
    x = torch.randn(3, 640, 4, 4)
    for bias in (True, False):
        grads = []
        for mode in (True, False):
            conv = torch.nn.Conv2d(640, 8, 3, padding=1, bias=bias)
            torch.nn.init.normal_(conv.weight, std=0.02, generator=torch.Generator().manual_seed(1))
            out, _ = conv_with_grad(conv, x, mode=mode)
            assert runs_as_one_product(out) == mode
            grads.append([p.grad for p in conv.parameters()])
        for fast, stock in zip(*grads):
            torch.testing.assert_close(fast, stock, rtol=1e-4, atol=1e-4)


def test_other_convolutions_keep_pytorchs_choice():
    torch.manual_seed(0)
    big_map = torch.randn(1, 640, 16, 16)  # more than 8x8 pixels: oneDNN is as fast or faster there
    small_weight = torch.nn.Conv2d(64, 8, 3, padding=1)  # 64 * 9 columns: nothing to save
    large = torch.nn.Conv2d(640, 8, 3, padding=1)
    largest = torch.nn.Conv2d(1280, 1280, 3, padding=1)
    with SmallMapConvolutions():
        assert not runs_as_one_product(large(big_map)) and not runs_per_image(large(big_map))
        bigger_map = largest(torch.randn(1, 1280, 17, 16))  # more than 16x16 pixels: oneDNN again
        assert not runs_as_one_product(bigger_map) and not runs_per_image(bigger_map)
        narrower = torch.nn.Conv2d(1920, 640, 3, padding=1)(torch.randn(1, 1920, 16, 16))  # under 1280 x 1280 x 9
        assert not runs_as_one_product(narrower) and not runs_per_image(narrower)
        assert not runs_as_one_product(small_weight(torch.randn(1, 64, 4, 4)))
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
