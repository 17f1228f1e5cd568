"""The Subjects tab of ``subjectgen ui``: the trained subjects, loading one into the kept pipeline, a zip, the
export formats of ``subjectgen export`` and a push to the Hub."""

from __future__ import annotations

from pathlib import Path

from subjectgen_diffusers.errors import SubjectgenError
from subjectgen_training.ui.workdir import WorkdirError, zip_subject


class SubjectsTab:
    """The App's Subjects actions."""

    def trained_subjects(self) -> list[str]:
        return [s.name for s in self.workdir.subjects() if s.is_trained()]

    def loaded_text(self) -> str:
        loaded = self.generation.loaded
        if loaded is None:
            return "No subject loaded in the generation pipeline (Generate loads the subject named above)."
        return f"Loaded in the generation pipeline: **{loaded.name}** (token `{loaded.token}`, scale {loaded.scale:g})"

    def load(self, name: str):
        paths = self.workdir.subject(name)
        if not paths.is_trained():
            raise WorkdirError(f"{paths.name} has no trained subject yet: train it on the Train tab first.")
        loaded = self.generation.load(paths.name, paths.subject)
        return f"loaded `{loaded.name}`", self.loaded_text()

    def unload(self):
        self.generation.unload()
        return "unloaded: the pipeline draws the base model alone", self.loaded_text()

    def download(self, name: str):
        path = zip_subject(self.workdir.subject(name), self.workdir.downloads)
        return f"`{path.name}` ready", str(path)

    def export(self, name: str, fmt: str):
        from subjectgen_diffusers.subject_format import Subject

        paths = self.workdir.subject(name)
        if not paths.is_trained():
            raise WorkdirError(f"{paths.name} has no trained subject yet.")
        subject = Subject.load(paths.subject)
        out = self.workdir.downloads / f"{paths.name}-{fmt}"
        if fmt == "lora":
            from subjectgen_diffusers.lora_export import export_lora

            written = export_lora(subject, out).written
        elif fmt == "diffusers":  # what `subjectgen export --format diffusers` writes (CD weights need the base UNet)
            from subjectgen_diffusers.export import export_diffusers, load_base_unet

            base_unet = load_base_unet(self.base) if subject.deltas or subject.bias_deltas else None
            written = export_diffusers(subject, out, base_unet=base_unet)
        else:
            from subjectgen_diffusers.export import export_a1111

            written = [export_a1111(subject, out / f"{paths.name}.safetensors")]
        return f"exported {len(written)} files to `{out}`", [str(p) for p in written if Path(p).is_file()]

    def push(self, name: str, repo_id: str, private: bool, token: str):
        from subjectgen_diffusers.hub import push_subject_to_hub

        paths = self.workdir.subject(name)
        if not paths.is_trained():
            raise WorkdirError(f"{paths.name} has no trained subject yet.")
        if not repo_id or "/" not in repo_id:
            raise WorkdirError("give the Hub repository as owner/name.")
        try:  # the token is passed to this one call only: never logged, written or kept
            info = push_subject_to_hub(paths.subject, repo_id, private=bool(private), token=token or None)
        except SubjectgenError:
            raise
        except Exception as error:  # noqa: BLE001 - no network, bad token, ...: a line in the page
            raise WorkdirError(f"the push to {repo_id} failed: {type(error).__name__}: {error}") from None
        return f"pushed: {getattr(info, 'commit_url', info)}", ""


def layout(gr, app, name, tab):
    """The tab's components and their events (inside ``gr.Tab("Subjects")`` given as ``tab``); returns the subject
    list, its listing function and the loaded-subject line (the page refreshes them)."""
    from subjectgen_training.ui.handlers import page_errors

    subjects_tab = tab
    with gr.Row():
        subjects = gr.Dropdown(app.trained_subjects(), label="Trained subjects", elem_id="subjects")
        refresh = gr.Button("Refresh", elem_id="refresh")
    subjects_status = gr.Markdown(elem_id="subjects-status")
    with gr.Row():
        load = gr.Button("Load into the generation pipeline", elem_id="load")
        unload = gr.Button("Unload", elem_id="unload")
    loaded = gr.Markdown(app.loaded_text(), elem_id="loaded")
    with gr.Row():
        make_zip = gr.Button("Make zip", elem_id="zip")
        download = gr.DownloadButton("Download zip", elem_id="download")
    with gr.Row():
        export_format = gr.Radio(["lora", "diffusers", "a1111"], value="lora", label="Export",
                                 elem_id="export-format",
                                 info="lora: kohya LoRA + embedding + diffusers LoRA; diffusers: textual "
                                      "inversion + Custom Diffusion weights; a1111: the embedding")
        export = gr.Button("Export", elem_id="export")
    exported = gr.File(label="Exported files", elem_id="exported", height=160)
    with gr.Accordion("Push to the Hugging Face Hub", open=False):
        repo = gr.Textbox(label="Repository (owner/name)", elem_id="repo")
        private = gr.Checkbox(value=True, label="Private", elem_id="private")
        token = gr.Textbox(type="password", label="Token (used for this push only, never stored)", elem_id="token")
        push = gr.Button("Push", elem_id="push")


    listing = lambda: gr.Dropdown(choices=app.trained_subjects())  # noqa: E731
    refresh.click(listing, None, [subjects])
    subjects_tab.select(listing, None, [subjects])
    subjects.change(lambda s: s or gr.skip(), [subjects], [name])
    load.click(page_errors(1)(app.load), [name], [subjects_status, loaded], concurrency_limit=1,
               concurrency_id="generation")
    unload.click(page_errors(1)(lambda: app.unload()), None, [subjects_status, loaded], concurrency_id="generation")
    make_zip.click(page_errors(1)(app.download), [name], [subjects_status, download])
    export.click(page_errors(1)(app.export), [name, export_format], [subjects_status, exported])
    push.click(page_errors(1)(app.push), [name, repo, private, token], [subjects_status, token])
    return subjects, listing, loaded
