"""Counting a training step's memory on a CPU: torch's ``MemTracker`` taught about frozen parameters, and the bytes
malloc holds sampled after every torch operation (:class:`LivePeak`, a CPU counterpart of
``torch.cuda.max_memory_allocated``)."""

from __future__ import annotations


def memory_tracker():
    """torch's ``MemTracker``, taught that frozen parameters take no gradient hook (it assumes every parameter trains)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    class NoHook:
        def remove(self) -> None:
            pass

    class FrozenAwareMemTracker(MemTracker):
        def _track_module_params_and_buffers(self, module, install_grad_hooks: bool = True):
            for param in module.parameters():
                if not param.requires_grad and self._param_to_grad_hook_handles.get(param) is None:
                    self._param_to_grad_hook_handles[param] = (NoHook(), NoHook())
            return super()._track_module_params_and_buffers(module, install_grad_hooks)

    return FrozenAwareMemTracker()


def live_bytes() -> int:
    """Bytes held by malloc'ed blocks now (glibc ``mallinfo2``: in-use arena bytes + mmap'ed blocks)."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


class LivePeak:
    """Samples :func:`live_bytes` after every torch operation inside the ``with`` block; ``peak`` is the largest."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class Sampler(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                tracker.peak = max(tracker.peak, live_bytes())
                return out

        self.peak = live_bytes()
        self.mode = Sampler()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)
