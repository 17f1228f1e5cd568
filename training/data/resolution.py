"""One rule and one message for an image side (``--resolution`` / ``resolution:``) in every command.

Stable Diffusion's VAE turns every 8 x 8 pixels into one latent cell, so an image side must be a positive multiple of
8 pixels (the shipped toy model's VAE uses 2 x 2 cells, which every multiple of 8 also fits). ``prepare``,
``generate``, ``regularize`` and ``train`` all call :func:`resolution_problem`, so a bad value is refused the same way
(with the same words) whichever command receives it, before any model loads.
"""

from __future__ import annotations

MULTIPLE = 8


def resolution_problem(value: object, name: str = "--resolution") -> str | None:
    """Why ``value`` is not a usable image side, or None when it is (``None`` itself is for callers to allow)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < MULTIPLE or value % MULTIPLE:
        return (f"{name} must be a positive multiple of {MULTIPLE} (the image side in pixels, e.g. 512), "
                f"got {value!r}")
    return None


def check_resolution(value: object, error: type[Exception], name: str = "--resolution") -> None:
    """Raise ``error`` with the shared message unless ``value`` is a usable image side."""
    problem = resolution_problem(value, name)
    if problem:
        raise error(problem + ".")
