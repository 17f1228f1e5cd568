"""Silence library output that is not the user's concern, precisely, so that what remains is true and readable.

* transformers 5 logs "`CLIPImageProcessor` requires torchvision (not installed); falling back to ..." (and the same
  for SigLIP and others) whenever diffusers touches its image-processor names. Nothing here uses torchvision (the
  pipelines run without a feature extractor), so those records, and only those, are dropped.
* diffusers ("Loading pipeline components...") and transformers ("Loading weights") draw their own progress bars
  while a model loads, nested inside each other and inside the command's own bar; loading takes seconds, so these
  bars are switched off and each job keeps one bar of its own. Download bars (huggingface_hub) stay.
* Log lines written while a progress bar is drawn are routed through ``tqdm.write`` by the CLI, so they no longer cut
  a bar in two.

The bars are switched off when the libraries' logging modules are first imported (:func:`after_import`), not by
importing them here: importing diffusers and transformers costs about 8 s of CPU, which a command that stops at a bad
input, or never loads a model, should not pay before its first line of output.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
from typing import Callable

TORCHVISION_FALLBACK = "requires torchvision (not installed)"
_FALLBACK_LOGGER = "transformers.utils.import_utils"  # where transformers' lazy module logs the fallback


class DropTorchvisionFallback(logging.Filter):
    """Drop transformers' "requires torchvision (not installed); falling back to ...Pil" records; keep the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        return TORCHVISION_FALLBACK not in record.getMessage()


def drop_torchvision_warnings() -> None:
    """Install the filter on the logger that emits those records (before or after transformers is imported)."""
    emitter = logging.getLogger(_FALLBACK_LOGGER)
    if not any(isinstance(f, DropTorchvisionFallback) for f in emitter.filters):
        emitter.addFilter(DropTorchvisionFallback())


class _AfterImport(importlib.abc.MetaPathFinder):
    """A one-shot finder: when ``name`` is imported, the real loader runs, then ``action(module)``."""

    def __init__(self, name: str, action: Callable) -> None:
        self.name, self.action = name, action

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # the real finders find it; this finder is done either way
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run_module, action = spec.loader.exec_module, self.action

        def exec_module(module) -> None:
            run_module(module)
            action(module)

        spec.loader.exec_module = exec_module  # this module's own loader instance
        return spec


def after_import(name: str, action: Callable) -> None:
    """Call ``action(module)`` once module ``name`` is imported: now if it already is, else right after its import."""
    if name in sys.modules:
        action(sys.modules[name])
    elif not any(isinstance(f, _AfterImport) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, action))


def _disable_transformers_bars(logging_module) -> None:
    """transformers' switch also switches off huggingface_hub's download bars, which stay on: a download of gigabytes
    is the user's concern."""
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars

    downloads_shown = not are_progress_bars_disabled()
    logging_module.disable_progress_bar()
    if downloads_shown:
        enable_progress_bars()


def disable_loading_bars() -> None:
    """Switch off the model-loading progress bars of diffusers and transformers as soon as each is imported."""
    after_import("diffusers.utils.logging", lambda module: module.disable_progress_bar())
    after_import("transformers.utils.logging", _disable_transformers_bars)


def quiet_libraries() -> None:
    drop_torchvision_warnings()
    disable_loading_bars()
