"""``subjectgen ui``: the web page (Gradio) over the same functions as the other commands (needs the ``ui`` extra)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default="toy-base",
                        help="base model: toy-base = builtin:toy-base (the shipped toy model, works offline on a CPU; "
                             "default), or a Stable Diffusion 1.x/2.x diffusers folder or Hub id (use a GPU)")
    parser.add_argument("--workdir", default="subjectgen-ui",
                        help="folder for photos, subjects and images, laid out as the CLI writes them (default: ./subjectgen-ui)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also publish a temporary public gradio.live link (off by default)")


def run(args: argparse.Namespace) -> int:
    import os

    from subjectgen_diffusers.errors import SubjectgenError

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError as error:
        raise SubjectgenError("the web UI needs gradio: pip install 'subjectgen-diffusers[ui]'.") from error
    from subjectgen_training.ui.app import UISettings, launch

    print(f"subjectgen ui: http://{args.host}:{args.port} (work folder {os.path.abspath(args.workdir)})")
    launch(UISettings(base=args.base, workdir=args.workdir), host=args.host, port=args.port, share=args.share)
    return 0
