"""Silence library output that is not the user's concern, precisely, so that what remains is true and readable.

* transformers 5 logs "`CLIPImageProcessor` requires torchvision (not installed); falling back to ..." (and the same
  for SigLIP and others) whenever diffusers touches its image-processor names. Nothing here uses torchvision (the
  pipelines run without a feature extractor), so those records, and only those, are dropped.
* diffusers ("Loading pipeline components...") and transformers ("Loading weights") draw their own progress bars
  while a model loads, nested inside each other and inside the command's own bar; loading takes seconds, so these
  bars are switched off and each job keeps one bar of its own. Download bars (huggingface_hub) stay.
* Log lines written while a progress bar is drawn are routed through ``tqdm.write`` by the CLI, so they no longer cut
  a bar in two.
"""

from __future__ import annotations

import logging

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


def disable_loading_bars() -> None:
    """Switch off the model-loading progress bars of diffusers and transformers (imports both)."""
    import diffusers.utils.logging
    import transformers.utils.logging
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars

    downloads_shown = not are_progress_bars_disabled()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()  # also switches off huggingface_hub's download bars ...
    if downloads_shown:
        enable_progress_bars()  # ... which stay: a download of gigabytes is the user's concern


def quiet_libraries() -> None:
    drop_torchvision_warnings()
    disable_loading_bars()
