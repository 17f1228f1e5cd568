"""The ``gr.Blocks`` page of ``subjectgen ui``: Photos -> Train -> Generate -> Subjects, one module per tab
(:mod:`.photos_tab`, :mod:`.train_tab`, :mod:`.generate_tab`, :mod:`.subjects_tab`: each holds its actions, as a part
of :class:`App`, and its layout); this module puts them on one page.

Every button calls the typed function the matching CLI command calls (prepare, train, generate, export, push) and
writes into the work folder as that command would (:mod:`subjectgen_training.ui.workdir`). Errors become a line in the page
(``error: ...``), never a stack trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import forms, generate_tab, photos_tab, subjects_tab, train_tab
from .generate_tab import GenerateTab, page_prompts, toy_generation  # noqa: F401 - the page's API
from .handlers import page_errors  # noqa: F401 - the page's API
from .jobs import TrainingQueue
from .photos_tab import PhotosTab
from .pipeline import GenerationPipeline
from .subjects_tab import SubjectsTab
from .train_tab import TrainTab, shown, toy_preset  # noqa: F401 - the page's API
from .workdir import Workdir, is_toy, resolve_base

@dataclass
class UISettings:
    base: str = "toy-base"
    workdir: str = "subjectgen-ui"


class App(PhotosTab, TrainTab, GenerateTab, SubjectsTab):
    """What the page's buttons call: one base model, one work folder, one training queue, one kept pipeline."""

    def __init__(self, settings: UISettings, queue: TrainingQueue | None = None):
        self.settings = settings
        self.base = resolve_base(settings.base)
        self.toy = is_toy(settings.base)
        self.workdir = Workdir(settings.workdir)
        self.queue = queue or TrainingQueue()
        self.fields = forms.train_form_fields()
        self.preset = toy_preset() if self.toy else {}
        self.generation = GenerationPipeline(self.base)

    def initial(self, field: forms.FormField, method: str):
        if field.name in self.preset:
            return self.preset[field.name]
        return forms.initial_value(field, method)

    @property
    def class_phrase(self) -> str:
        return "cartoon face" if self.toy else "person"


def build_app(settings: UISettings, queue: TrainingQueue | None = None):
    """The page; ``.launch()`` it (see :func:`launch`)."""
    import gradio as gr

    app = App(settings, queue)
    with gr.Blocks(title="subjectgen") as page:
        gr.Markdown(f"# subjectgen\nBase model: `{settings.base}` · work folder: `{app.workdir.root}`")
        name = gr.Textbox(value="sample", label="Subject name", elem_id="subject-name")
        with gr.Tab("Photos", elem_id="tab-photos"):
            photos_tab.layout(gr, app, name)
        with gr.Tab("Train", elem_id="tab-train"):
            train_tab.layout(gr, app, name)
        with gr.Tab("Generate", elem_id="tab-generate"):
            generate_status = generate_tab.layout(gr, app, name)
        with gr.Tab("Subjects", elem_id="tab-subjects") as tab:
            subjects, listing, loaded = subjects_tab.layout(gr, app, name, tab)
        generate_status.change(lambda: app.loaded_text(), None, [loaded])  # Generate may have loaded another subject
        page.load(listing, None, [subjects])
        page.load(lambda: app.loaded_text(), None, [loaded])
        # A reopened page shows the training that kept running on the server.
        page.load(lambda: app.queue.latest_subject() or gr.skip(), None, [name])
    page.subjectgen_app = app
    return page

def launch(settings: UISettings, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           prevent_thread_lock: bool = False):
    """Serve the page: only files inside the work folder (uploads are cached there too), at most 20 MB per upload."""
    import os

    root = Path(settings.workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(root / ".uploads")
    page = build_app(settings)
    page.queue(default_concurrency_limit=1)
    page.launch(server_name=host, server_port=port, share=share, allowed_paths=[str(root)], max_file_size="20mb",
                prevent_thread_lock=prevent_thread_lock, show_error=False, quiet=True)
    return page
