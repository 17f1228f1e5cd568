"""CPU threads for torch that degrade gracefully when other programs share the cores.

PyTorch's CPU build runs its intra-op parallelism on OpenMP (GNU libgomp), one thread per core by default. At the end
of every parallel region each thread waits at a barrier for the others, and libgomp's default wait (``OMP_WAIT_POLICY``
unset) *spins* on the core for a while before it sleeps. When another program holds one of the cores, the thread that
shares it gets only part of it: its siblings spin through their own time slices waiting for it, and every one of the
thousands of small operators in a diffusion step pays that delay. ``training/benchmarks/threads_bench.py`` measured it
on the 2-core machine this was written on (README, "CPU threads"): with 2 threads and spinning waits a toy image or a
toy training step took 8-19 times longer than with 1 thread, while with ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads
sleep at once) 2 threads took 0.5-1.8 times the time of 1.

So before torch loads, :func:`configure_threads`:

* sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy;
* uses the ``--threads`` the user gave, else ``OMP_NUM_THREADS`` if set (e.g. by ``accelerate launch`` for several
  processes), else the cores that are free now (the cores this process may use minus the 1-minute load average,
  at least 1);
* exports the count as ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` (so child processes inherit it) and calls
  ``torch.set_num_threads`` if torch is already imported.

OpenMP reads ``OMP_WAIT_POLICY`` once, when torch's libgomp loads, so the CLI calls this before importing anything
that imports torch.
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger(__name__)

AUTO = "auto"


def parse_threads(text: str) -> int | None:
    """``--threads`` value: ``auto`` (None) or a positive count; anything else is an argparse error."""
    import argparse

    if text == AUTO:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number or '{AUTO}', got {text!r}")
    return value


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and ``taskset`` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def free_cores() -> int:
    """Usable cores minus those other programs kept busy over the last minute (1-minute load average), at least 1."""
    cores = usable_cores()
    try:
        busy = os.getloadavg()[0]
    except OSError:  # not available on this platform
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def choose_threads(requested: int | None, environ: dict[str, str] | None = None) -> tuple[int, str]:
    """The thread count and why: the request, else ``OMP_NUM_THREADS``, else the free cores."""
    environ = os.environ if environ is None else environ
    if requested is not None:
        return requested, "--threads"
    preset = environ.get("OMP_NUM_THREADS", "").strip()
    if preset.isdigit() and int(preset) > 0:
        return int(preset), "OMP_NUM_THREADS"
    return free_cores(), f"{AUTO}: free cores of {usable_cores()}"


def configure_threads(requested: int | None = None) -> int:
    """Set the OpenMP wait policy and torch's CPU thread count (see the module docstring); return the count."""
    threads, why = choose_threads(requested)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:  # too late for the wait policy, not for the count
        sys.modules["torch"].set_num_threads(threads)
    logger.debug("torch CPU threads: %d (%s), OMP_WAIT_POLICY=%s", threads, why, os.environ["OMP_WAIT_POLICY"])
    return threads
