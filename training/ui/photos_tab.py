"""The Photos tab of ``subjectgen ui``: upload or the sample subject, then ``prepare`` (face crops and masks)."""

from __future__ import annotations

from subjectgen_training.ui.uploads import store_uploads
from subjectgen_training.ui.workdir import WorkdirError, prepare_subject


class PhotosTab:
    """The App's Photos actions (the App holds the settings, work folder and queue)."""

    def prepare(self, name: str, files):
        paths = self.workdir.subject(name)
        lines = []
        if files:
            from subjectgen_training.data.photos import IMAGE_SUFFIXES

            already = sum(p.suffix.lower() in IMAGE_SUFFIXES for p in paths.photos.iterdir()) if paths.photos.is_dir() else 0
            result = store_uploads(list(files), paths.photos, already=already)
            lines += [f"- refused `{file}`: {why}" for file, why in result.refused]
        if not paths.photos.is_dir() or not any(paths.photos.iterdir()):
            raise WorkdirError("no usable photo was uploaded: " + ("; ".join(f"{f}: {w}" for f, w in result.refused)
                               if files else "add 4-20 photos of the person, or use the sample subject."))
        return self._report(paths, prepare_subject(paths, self.settings.base), lines)

    def use_sample(self, name: str):
        paths = self.workdir.subject(name)
        if self.toy:
            from subjectgen_training.toy.subject_photos import write_subject_photos

            write_subject_photos(paths.photos)
        else:
            from subjectgen_diffusers.atomic_io import atomic_save_image
            from subjectgen_training.data.sample_photos import astronaut_image

            atomic_save_image(paths.photos / "astronaut.png", astronaut_image())
        return self._report(paths, prepare_subject(paths, self.settings.base), [])

    def _report(self, paths, report: dict, lines: list[str]):
        from subjectgen_training.data.prepare import REASONS

        kept = [(str(paths.prepared / e["output"]), e["file"]) for e in report["photos"] if e["status"] == "kept"]
        for entry in report["photos"]:
            if entry["status"] != "kept":
                lines.append(f"- dropped `{entry['file']}`: {REASONS.get(entry['reason'], entry['reason'])} ({entry['detail']})")
        head = f"**{report['kept']} kept, {report['dropped']} dropped** -> `{paths.prepared}`"
        if report["kept"] == 0:
            head = f"error: no usable photo in `{paths.photos}`; add photos where the face is clearly visible."
        return "\n".join([head, *lines]), kept


def layout(gr, app, name) -> None:
    """The tab's components and their events (inside ``gr.Tab("Photos")``)."""
    from subjectgen_training.ui.handlers import page_errors

    photos = gr.File(file_count="multiple", label="Photos of the person (4-20 images, at most 20 MB each)",
                     elem_id="photos")
    with gr.Row():
        prepare = gr.Button("Prepare", variant="primary", elem_id="prepare")
        sample = gr.Button("Use the sample subject", elem_id="sample")
    photos_status = gr.Markdown(elem_id="photos-status")
    kept = gr.Gallery(label="Kept photos", columns=8, height=180, elem_id="kept")

    prepare.click(page_errors(1)(app.prepare), [name, photos], [photos_status, kept])
    sample.click(page_errors(1)(app.use_sample), [name], [photos_status, kept])
