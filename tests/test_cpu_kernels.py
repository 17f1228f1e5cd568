"""The training step's CPU kernel choice (subjectgen_training.cpu_kernels): frozen 3x3 weights of SD-sized channel
counts on 16x16 to 64x64 maps run Winograd's F(2x2, 3x3), large ones on the smallest maps one matrix product over the
batch, with the same values and input gradients as PyTorch's own choice; everything else is left alone."""

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


def runs_winograd(out: torch.Tensor) -> bool:
    ops = backward_ops(out)
    return "_WinogradConv2dBackward" in ops and not any("Conv" in op and "Winograd" not in op for op in ops)


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


def test_the_largest_weights_on_maps_under_16x16_run_per_image_with_the_same_values_and_gradients():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1280, 1280, 3, padding=1).requires_grad_(False)  # as SD 1.5's 1280 -> 1280 ones
    for size in (14, 12):  # (16x16 and up: Winograd)
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


def test_frozen_sd_sized_convs_on_16x16_to_64x64_maps_run_winograd_with_the_same_values_and_input_gradients():
    torch.manual_seed(0)
    shapes = ((320, 320, 32, 32, True), (640, 320, 16, 24, False), (320, 640, 16, 16, True))
    for cin, cout, height, width, bias in shapes:
        conv = torch.nn.Conv2d(cin, cout, 3, padding=1, bias=bias).requires_grad_(False)
        torch.nn.init.normal_(conv.weight, std=0.03)
        x = torch.randn(2, cin, height, width)
        fast, fast_grad = conv_with_grad(conv, x, mode=True)
        assert runs_winograd(fast), (cin, cout, height, width)
        stock, stock_grad = conv_with_grad(conv, x, mode=False)
        assert not runs_winograd(stock)
        assert fast.shape == stock.shape and fast.is_contiguous()
        # float32 round-off of sums of thousands of terms: within 1e-5 of each tensor's scale
        torch.testing.assert_close(fast, stock, rtol=0, atol=1e-5 * float(stock.abs().max()))
        torch.testing.assert_close(fast_grad, stock_grad, rtol=0, atol=1e-5 * float(stock_grad.abs().max()))


def test_chained_winograd_convs_sharing_one_workspace_get_their_own_weights_in_the_backward():
    torch.manual_seed(0)
    first, second = (torch.nn.Conv2d(320, 320, 3, padding=1).requires_grad_(False) for _ in range(2))
    x = torch.randn(2, 320, 16, 16)
    grads = []
    for mode in (SmallMapConvolutions(), None):
        leaf = x.clone().requires_grad_(True)
        with mode if mode is not None else torch.enable_grad():
            out = second(torch.nn.functional.silu(first(leaf)))  # second's transform overwrites first's
        assert runs_winograd(out) == (mode is not None)
        out.backward(torch.ones_like(out))
        grads.append((out.detach(), leaf.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-5)


def test_winograd_needs_a_frozen_weight_stride_1_padding_1_an_even_map_and_sd_sized_channels():
    torch.manual_seed(0)
    trainable = torch.nn.Conv2d(320, 320, 3, padding=1)  # Winograd computes no weight gradient
    frozen = torch.nn.Conv2d(320, 320, 3, padding=1).requires_grad_(False)
    toy = torch.nn.Conv2d(64, 64, 3, padding=1).requires_grad_(False)  # the toy models' widths keep PyTorch's kernel
    x = torch.randn(1, 320, 16, 16, requires_grad=True)
    with SmallMapConvolutions():
        out = trainable(x)
        assert not runs_winograd(out)
        out.sum().backward()
        assert trainable.weight.grad is not None and trainable.bias.grad is not None
        assert runs_winograd(frozen(x))
        assert not runs_winograd(frozen(torch.randn(1, 320, 17, 16, requires_grad=True)))  # odd map
        assert not runs_winograd(F.conv2d(x, frozen.weight, frozen.bias, stride=2, padding=1))
        assert not runs_winograd(F.conv2d(x, frozen.weight, frozen.bias, padding=0))
        assert not runs_winograd(toy(torch.randn(1, 64, 16, 16, requires_grad=True)))
        assert not runs_winograd(frozen(torch.randn(1, 320, 66, 64, requires_grad=True)))  # past 64x64: oneDNN


def test_a_weight_changed_in_place_before_the_backward_is_refused_not_used_stale():
    conv = torch.nn.Conv2d(320, 320, 3, padding=1).requires_grad_(False)
    x = torch.randn(1, 320, 16, 16, requires_grad=True)
    with SmallMapConvolutions():
        out = conv(x)
    with torch.no_grad():
        conv.weight.mul_(2)
    try:
        out.sum().backward()
    except RuntimeError as error:
        assert "modified by an inplace operation" in str(error)
    else:
        raise AssertionError("the backward ran on a weight changed after the forward")
