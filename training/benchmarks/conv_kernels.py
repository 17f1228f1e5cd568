"""The CPU convolution kernels :mod:`subjectgen_training.cpu_kernels` chooses between, at SD 1.5's shapes.

For each 3x3 convolution shape (batch 2, a frozen weight, an input that needs its gradient), the forward plus the
input-gradient backward is timed in process CPU time, best of ``--repeats`` rounds of ``--calls`` calls, for
PyTorch's own choice (oneDNN), PyTorch's im2col kernel (``thnn_conv2d``, one product per image) and ours:
:func:`~subjectgen_training.cpu_kernels.batch_gemm_conv2d` (one product for the batch) and
:func:`~subjectgen_training.winograd.winograd_conv2d` (stride 1 only; its two weight transforms per call included, into
one workspace kept between calls as in training). It prints a Markdown table with the kernel the rule chooses and the
largest difference of each kernel's output from oneDNN's. Run it under ``OMP_NUM_THREADS=1`` on a quiet machine::

    OMP_NUM_THREADS=1 python -m subjectgen_training.benchmarks.conv_kernels
"""

from __future__ import annotations

import argparse
import time

# (in channels, out channels, input map side, stride): SD 1.5's UNet 3x3 convolutions at 256 and 512 px
SHAPES = ((1280, 1280, 4, 1), (2560, 1280, 4, 1), (1280, 1280, 8, 1), (2560, 1280, 8, 1), (1920, 1280, 8, 1),
          (1280, 1280, 8, 2), (1280, 1280, 16, 2), (640, 640, 16, 2), (2560, 1280, 16, 1), (1920, 1280, 16, 1),
          (1280, 1280, 16, 1), (1920, 640, 16, 1), (1280, 640, 16, 1), (960, 640, 16, 1), (640, 640, 16, 1),
          (320, 640, 16, 1), (640, 640, 32, 2), (320, 320, 32, 1), (640, 320, 32, 1), (960, 320, 32, 1),
          (640, 640, 32, 1), (1920, 640, 32, 1), (1280, 1280, 32, 1), (320, 320, 64, 1), (960, 320, 64, 1))


CHOSEN = {"onednn": "oneDNN", "per_image_gemm": "thnn im2col", "batch_gemm": "one GEMM (ours)",
          "winograd": "Winograd (ours)"}


def kernels():
    import torch
    import torch.nn.functional as F

    from subjectgen_training.cpu_kernels import batch_gemm_conv2d
    from subjectgen_training.winograd import Workspace, supports, winograd_conv2d

    workspace = Workspace()  # as in training: one buffer for the weight transforms, kept between calls

    def onednn(x, w, b, stride):
        return F.conv2d(x, w, b, stride, 1)

    def thnn(x, w, b, stride):
        return torch._C._nn.thnn_conv2d(x, w, tuple(w.shape[-2:]), b, (stride, stride), (1, 1))

    def ours(x, w, b, stride):
        return batch_gemm_conv2d(x, w, b, (stride, stride), (1, 1))

    def winograd(x, w, b, stride):
        if stride != 1 or not supports(x.shape, w.shape):
            return None
        return winograd_conv2d(x, w, b, workspace)  # the weight's two transforms included

    return {"oneDNN": onednn, "thnn im2col": thnn, "one GEMM (ours)": ours, "Winograd (ours)": winograd}


def measure(shape, calls: int, repeats: int) -> dict[str, tuple[float, float]]:
    """``{kernel: (best ms per forward + backward, max |output - oneDNN's|)}`` for one shape."""
    import torch

    torch.manual_seed(0)
    cin, cout, side, stride = shape
    x0 = torch.randn(2, cin, side, side)
    weight, bias = torch.randn(cout, cin, 3, 3) * 0.02, torch.randn(cout) * 0.1
    reference = kernels()["oneDNN"](x0, weight, bias, stride)
    grad = torch.randn_like(reference)
    results = {}
    for name, kernel in kernels().items():
        x = x0.clone().requires_grad_(True)
        out = kernel(x, weight, bias, stride)
        if out is None:  # the kernel does not cover this shape
            continue
        error = float((out.detach() - reference).abs().max())
        kernel(x, weight, bias, stride).backward(grad)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            began = time.process_time()
            for _ in range(calls):
                x.grad = None
                kernel(x, weight, bias, stride).backward(grad)
            best = min(best, (time.process_time() - began) / calls * 1000)
        results[name] = (best, error)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from subjectgen_training.cpu_kernels import kernel_for

    names = list(kernels())
    print("| conv (output map) | " + " | ".join(f"{n} (ms)" for n in names) + " | chosen | max diff from oneDNN |")
    print("| --- |" + " ---: |" * len(names) + " --- | --- |")
    for shape in SHAPES:
        cin, cout, side, stride = shape
        results = measure(shape, args.calls, args.repeats)
        out_side = (side + 2 - 3) // stride + 1
        label = f"{cin}->{cout} @ {out_side}x{out_side}" + (f" (stride {stride})" if stride != 1 else "")
        chosen = CHOSEN[kernel_for((2, cin, side, side), (cout, cin, 3, 3), (stride, stride), (1, 1))]
        diff = max(e for _, e in results.values())
        cells = [f"{results[n][0]:.1f}" if n in results else "-" for n in names]
        print(f"| {label} | " + " | ".join(cells) + f" | {chosen} | {diff:.1e} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
