"""What every button of the page shares: an error becomes the status line (``error: ...``), never a stack trace."""

from __future__ import annotations

import functools
import logging

from subjectgen_diffusers.errors import SubjectgenError

logger = logging.getLogger("subjectgen_training.ui.app")


def page_errors(count: int):
    """Wrap a handler with ``count`` outputs after its status line: an error becomes the status, the rest is skipped."""
    import gradio as gr

    def wrap(handler):
        @functools.wraps(handler)
        def run(*args):
            try:
                return handler(*args)
            except (SubjectgenError, RuntimeError, ValueError) as error:
                text = str(error)
                message = text if text.startswith("error:") else f"error: {text}"
            except Exception as error:  # noqa: BLE001 - the page shows a line, the log keeps the traceback
                logger.exception("UI action failed")
                message = f"error: {type(error).__name__}: {error} (details in the server log)"
            return (message, *[gr.skip() for _ in range(count)]) if count else message

        return run

    return wrap
