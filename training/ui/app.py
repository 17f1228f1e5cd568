"""The ``gr.Blocks`` page of ``subjectgen ui``: Photos -> Train -> Generate -> Subjects.

Every button calls the typed function the matching CLI command calls (prepare, train, generate, export, push) and
writes into the work folder as that command would (:mod:`subjectgen_training.ui.workdir`). Errors become a line in the page
(``error: ...``), never a stack trace.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from subjectgen_diffusers.errors import SubjectgenError

from . import forms
from .jobs import TrainingQueue
from .pipeline import GenerationPipeline
from .uploads import store_uploads
from .workdir import Workdir, WorkdirError, is_toy, prepare_subject, resolve_base, zip_subject

logger = logging.getLogger(__name__)
EXTRA_KEYS = ("effective_lr", "effective_token_lr", "num_processes")  # train_config.json keys that are not config
MAIN_FIELDS = ("steps", "lr", "token_lr")  # shown above the fold; the rest sit under "All training options"


@dataclass
class UISettings:
    base: str = "toy-base"
    workdir: str = "subjectgen-ui"


def toy_preset() -> dict:
    """The toy demo's training settings (``subjectgen demo``): what learns on the shipped toy base."""
    from subjectgen_training.experiment.demos import toy_demo_config

    config = toy_demo_config(steps=300)
    preset = {**config.train, **config.setups[0].train}
    preset.pop("checkpoint_every")  # the page checkpoints every tenth of the steps, so Stop can always resume
    preset.pop("reg_weight")  # CR's pull belongs to the methods with cross-initialised tokens; the form is for all
    return preset


def toy_generation() -> dict:
    from subjectgen_training.experiment.demos import toy_demo_config

    generate = toy_demo_config().generate
    return {"steps": generate.steps, "guidance": generate.guidance}


def page_prompts(text: str) -> list[str]:
    """The prompts of the page's prompt box: a shipped set's name or prompt text (``|`` separates several), each
    with ``{}`` for the subject. Unlike the CLI's ``--prompts``, a file path is refused: the page reads no server files."""
    from subjectgen_training.prompts import available_prompt_sets, load_prompts

    text = (text or "").strip()
    if text not in available_prompt_sets() and ("/" in text or "\\" in text or text.endswith(".txt")):
        raise WorkdirError("type the prompt itself or pick a shipped prompt set; the page does not read files.")
    templates = load_prompts(text)
    missing = [t for t in templates if "{}" not in t]
    if missing:
        raise WorkdirError(f"each prompt needs {{}} where the subject goes (e.g. 'a photo of {{}} on a beach'); "
                           f"missing in {missing[0]!r}.")
    return templates


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


class App:
    def __init__(self, settings: UISettings, queue: TrainingQueue | None = None):
        self.settings = settings
        self.base = resolve_base(settings.base)
        self.toy = is_toy(settings.base)
        self.workdir = Workdir(settings.workdir)
        self.queue = queue or TrainingQueue()
        self.fields = forms.train_form_fields()
        self.preset = toy_preset() if self.toy else {}
        self.generation = GenerationPipeline(self.base)

    # -- values ------------------------------------------------------------------------------------------------
    def initial(self, field: forms.FormField, method: str):
        if field.name in self.preset:
            return self.preset[field.name]
        return forms.initial_value(field, method)

    @property
    def class_phrase(self) -> str:
        return "cartoon face" if self.toy else "person"

    # -- Photos --------------------------------------------------------------------------------------------------
    def prepare(self, name: str, files):
        paths = self.workdir.subject(name)
        lines = []
        if files:
            from subjectgen_training.photos import IMAGE_SUFFIXES

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
            from subjectgen_training.sample_photos import astronaut_image

            atomic_save_image(paths.photos / "astronaut.png", astronaut_image())
        return self._report(paths, prepare_subject(paths, self.settings.base), [])

    def _report(self, paths, report: dict, lines: list[str]):
        from subjectgen_training.prepare import REASONS

        kept = [(str(paths.prepared / e["output"]), e["file"]) for e in report["photos"] if e["status"] == "kept"]
        for entry in report["photos"]:
            if entry["status"] != "kept":
                lines.append(f"- dropped `{entry['file']}`: {REASONS.get(entry['reason'], entry['reason'])} ({entry['detail']})")
        head = f"**{report['kept']} kept, {report['dropped']} dropped** -> `{paths.prepared}`"
        if report["kept"] == 0:
            head = f"error: no usable photo in `{paths.photos}`; add photos where the face is clearly visible."
        return "\n".join([head, *lines]), kept

    # -- Train ---------------------------------------------------------------------------------------------------
    def method_changed(self, method: str):
        """The form for ``method``: each field's recipe value, and only this method's own fields shown."""
        import gradio as gr

        return [gr.update(value=shown(field, self.initial(field, method)), visible=field.applies_to(method))
                for field in self.fields]

    def start(self, name: str, method: str, reg: str, reg_model: str, reg_lora: str, *values):
        from subjectgen_training.train_config import TrainConfig

        paths = self.workdir.subject(name)
        if not (paths.prepared / "prepare.json").is_file() or not any(paths.prepared.glob("*.png")):
            raise WorkdirError(f"{paths.name} has no prepared photos: add photos on the Photos tab and press Prepare.")
        flags = forms.read_form(self.fields, list(values), method)  # the other methods' fields are hidden
        flags = {**{k: v for k, v in self.preset.items() if k not in flags and k in TrainConfig.field_names()}, **flags}
        steps = flags.get("steps") or forms.recipe_values(method).get("steps") or 1
        if not flags.get("checkpoint_every"):
            flags["checkpoint_every"] = max(1, int(steps) // 10)  # so Stop can always resume
        prepare = None
        reg_dir = None
        if reg in ("base", "alt"):
            model, lora = self.regularization_model(reg, reg_model, reg_lora)
            reg_dir = self.workdir.regularization(model, lora)
            prepare = functools.partial(self._make_regularization, reg_dir, flags.get("class_prompt"), model, lora)
        elif reg != "none":
            raise WorkdirError(f"regularisation must be none, base or alt, got {reg!r}.")
        config = TrainConfig.from_dict({**flags, "base": self.base, "photos": str(paths.prepared), "method": method,
                                        "out": str(paths.subject), "reg_dir": str(reg_dir) if reg_dir else None})
        config.resolved()  # every check of the config now, in the page, before queueing
        from subjectgen_training.checkpoints import checkpoint_dir

        shutil.rmtree(checkpoint_dir(paths.subject), ignore_errors=True)  # Start = from step 0, not a stale run
        job = self.queue.submit(paths.name, config, prepare)
        what = f"training {config.steps or 'recipe'} steps of {method} into `{paths.subject}`"
        if reg_dir is not None:
            what += f", regularisation images from `{model}`" + (f" + LoRA `{lora}`" if lora else "")
        return self._queued(job, what)

    def regularization_model(self, reg: str, model: str, lora: str) -> tuple[str, str | None]:
        """The model (and LoRA) that draws the class images: the base, or the alternative model the page names."""
        if reg == "base":
            return self.settings.base, None
        model, lora = (model or "").strip(), (lora or "").strip() or None
        if not model:
            raise WorkdirError("regularisation from an alternative model: give the model (a diffusers folder or Hub "
                               "id, e.g. an SDXL fine-tune) and optionally its LoRA (a file, folder or Hub id).")
        return model, lora

    def _queued(self, job, what: str) -> str:
        place = self.queue.place(job)
        return f"{what} (job {job.id}" + (f", place {place} in the queue)" if place > 1 else ")")

    def _make_regularization(self, out: Path, class_prompt: str | None, model: str, lora: str | None) -> Path:
        """``subjectgen regularize`` into the workdir's shared folder of this model (and LoRA): made once, reused."""
        from subjectgen_training.builtin_models import resolve_model
        from subjectgen_training.regularize import RegularizeConfig, generate_regularization

        cache = self.workdir.root / "models"
        model, lora = resolve_model(resolve_base(model), cache), resolve_model(lora, cache)
        if self.toy:
            from subjectgen_training.experiment.demos import toy_demo_config

            reg = toy_demo_config().regularizations["base"]  # the demo's set: 16 images at the toy world's size
            config = RegularizeConfig(model=model, lora=lora, prompt=reg.prompt, num=reg.num, out=out, steps=reg.steps,
                                      guidance=reg.guidance, resolution=reg.resolution, batch_size=reg.batch_size)
        else:
            config = RegularizeConfig(model=model, lora=lora, prompt=f"a photo of a {class_prompt or 'person'}",
                                      num=200, out=out)
        return generate_regularization(config)

    def stop(self, name: str):
        job = self.queue.stop(self.workdir.subject(name).name)
        if job is None:
            raise WorkdirError("nothing is training for this subject.")
        if job.state == "stopped":
            return "removed from the queue"
        every = job.config.checkpoint_every
        return f"stopping at the next checkpoint (every {every} steps); Resume continues from it"

    def resume(self, name: str):
        """Queue the subject's stopped run again with ``resume=True``: it continues from its latest checkpoint in
        ``<out>.checkpoints/`` as ``subjectgen train --resume`` does."""
        from subjectgen_training.checkpoints import list_checkpoints

        paths = self.workdir.subject(name)
        found = list_checkpoints(paths.subject)
        if not found:
            raise WorkdirError(f"{paths.name} has no stopped training to resume: press Train to start one.")
        job = self.queue.snapshot(paths.name)
        config = job.config if job is not None else self._recorded_config(paths)  # after a server restart: the file
        job = self.queue.submit(paths.name, dataclasses.replace(config, resume=True))
        return self._queued(job, f"resuming from `{found[-1].name}`")

    def _recorded_config(self, paths):
        """The run's config from its ``train_config.json``, whose local paths are recorded by name only: the work
        folder's layout gives them back."""
        from subjectgen_training.train_config import TrainConfig

        recorded = paths.subject / "train_config.json"
        if not recorded.is_file():
            raise WorkdirError(f"{paths.name} has checkpoints but no train_config.json: press Train to start again.")
        data = {k: v for k, v in json.loads(recorded.read_text(encoding="utf-8")).items() if k not in EXTRA_KEYS}
        data.update(base=self.base, photos=str(paths.prepared), out=str(paths.subject))
        if data.get("reg_dir"):
            data["reg_dir"] = str(self.workdir.root / "regularization" / data["reg_dir"])
        return TrainConfig.from_dict(data)

    def progress_text(self, name: str) -> str:
        try:
            job = self.queue.snapshot(self.workdir.subject(name).name)
        except SubjectgenError:
            return ""
        if job is None:
            return "no training yet"
        fraction = job.step / job.total if job.total else 0.0
        eta = job.eta_seconds()
        parts = [f"{job.state}", f"step {job.step}/{job.total}", f"{100 * fraction:.0f}%"]
        if job.state == "queued":
            parts.append(f"place {self.queue.place(self.queue.latest(job.subject))} in the queue")
        if eta is not None and job.state in ("running", "stopping"):
            parts.append(f"ETA {eta:.0f} s")
        if job.losses:
            parts.append(f"loss {job.losses[-1][1]:.4f}")
        text = " · ".join(parts)
        if job.message:
            text += f"\n{job.message}"
        return text

    def loss_frame(self, name: str):
        import pandas as pd

        try:
            job = self.queue.snapshot(self.workdir.subject(name).name)
        except SubjectgenError:
            job = None
        losses = job.losses if job else []
        steps, values = [s for s, _ in losses], [v for _, v in losses]
        # The per-step loss is noisy (a random timestep each step); the mean of the last 10 steps shows the trend.
        means = pd.Series(values, dtype=float).rolling(10, min_periods=1).mean().tolist()
        return pd.DataFrame({"step": steps, "loss": means})

    def progress_bar(self, name: str) -> str:
        try:
            job = self.queue.snapshot(self.workdir.subject(name).name)
        except SubjectgenError:
            job = None
        percent = 100 * job.step / job.total if job and job.total else 0
        colour = {"failed": "#c0392b", "stopped": "#999"}.get(job.state if job else "", "#ea580c")
        return (f'<div style="background:#eee;border-radius:4px;height:12px"><div style="width:{percent:.1f}%;'
                f'background:{colour};height:12px;border-radius:4px"></div></div>')

    # -- Generate ------------------------------------------------------------------------------------------------
    def generate(self, name: str, prompt: str, scale: float, seed: float, number: float):
        from subjectgen_training.generate import GenerateConfig, generate_images, read_manifest

        paths = self.workdir.subject(name)
        if not paths.is_trained():
            raise WorkdirError(f"{paths.name} has no trained subject yet: train it on the Train tab first.")
        templates = page_prompts(prompt)
        runs = paths.root / "images"
        run = f"{len(list(runs.iterdir())) + 1 if runs.is_dir() else 1:04d}"
        settings = toy_generation() if self.toy else {}
        common = dict(base=self.base, num_per_prompt=int(number), seed=int(seed), **settings)
        with self.generation.lock:  # the kept pipeline: this subject loaded, then the base alone for the same seeds
            self.generation.load(paths.name, paths.subject, float(scale))
            subject_out = generate_images(GenerateConfig(
                prompts="|".join(templates), out=str(paths.images(run) / "subject"), subject=str(paths.subject),
                scale=float(scale), subject_phrase="{} " + self.class_phrase, **common), pipe=self.generation.pipe)
            with self.generation.without_subject() as pipe:
                base_out = generate_images(GenerateConfig(
                    prompts="|".join(t.replace("{}", f"a {self.class_phrase}") for t in templates),
                    out=str(paths.images(run) / "base"), **common), pipe=pipe)
        scores, note = self.scores(paths, [subject_out, base_out])
        subject_images = [(str(subject_out / e["file"]), label("subject", e, scores.get(subject_out / e["file"])))
                          for e in read_manifest(subject_out)]
        base_images = [(str(base_out / e["file"]), label("base", e, scores.get(base_out / e["file"])))
                       for e in read_manifest(base_out)]
        return f"{len(subject_images)} images -> `{paths.images(run)}`{note}", subject_images, base_images

    def scores(self, paths, folders: list[Path]) -> tuple[dict[Path, str], str]:
        """Identity and prompt scores of each image (``subjectgen evaluate``'s), with a note for the status line."""
        from .scores import available_backends, score_folder

        backends = available_backends(self.toy)
        if not backends.any:
            return {}, " · no scores: install the `face` extra for identity scores"
        out, measured = {}, ""
        try:
            for folder in folders:
                captions, measured = score_folder(folder, paths.prepared, backends)
                out.update({folder / file: text for file, text in captions.items()})
        except Exception as error:  # noqa: BLE001 - scores are extra: the images stay, the page says why
            logger.warning("scoring failed", exc_info=True)
            return {}, f" · no scores: {error}"
        return out, (f" · scores: identity by `{backends.face_model}`, prompt by `{backends.prompt_scorer}` "
                     f"(higher is better; {measured})")

    # -- Subjects ------------------------------------------------------------------------------------------------
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


def build_app(settings: UISettings, queue: TrainingQueue | None = None):
    """The page; ``.launch()`` it (see :func:`launch`)."""
    import gradio as gr

    from subjectgen_training.methods import REGISTRY
    from subjectgen_training.prompts import available_prompt_sets

    app = App(settings, queue)
    methods = list(REGISTRY)
    method0 = "cd+cr"
    toy_prompts = []
    if app.toy:
        from subjectgen_training.experiment.demos import TOY_PROMPTS

        toy_prompts = list(TOY_PROMPTS)
    with gr.Blocks(title="subjectgen") as page:
        gr.Markdown(f"# subjectgen\nBase model: `{settings.base}` · work folder: `{app.workdir.root}`")
        name = gr.Textbox(value="sample", label="Subject name", elem_id="subject-name")
        with gr.Tab("Photos", elem_id="tab-photos"):
            photos = gr.File(file_count="multiple", label="Photos of the person (4-20 images, at most 20 MB each)",
                             elem_id="photos")
            with gr.Row():
                prepare = gr.Button("Prepare", variant="primary", elem_id="prepare")
                sample = gr.Button("Use the sample subject", elem_id="sample")
            photos_status = gr.Markdown(elem_id="photos-status")
            kept = gr.Gallery(label="Kept photos", columns=8, height=180, elem_id="kept")
        with gr.Tab("Train", elem_id="tab-train"):
            with gr.Row():
                method = gr.Radio(methods, value=method0, label="Method", elem_id="method",
                                  info="; ".join(f"{n}: {m.info.title}" for n, m in REGISTRY.items()))
                reg = gr.Radio([("none", "none"), ("from the base model", "base"),
                                ("from an alternative model with a LoRA", "alt")], value="none",
                               label="Regularisation images", elem_id="reg",
                               info="class images for prior preservation, drawn once into the work folder and reused")
            with gr.Row(visible=False) as reg_row:
                reg_model = gr.Textbox(value="builtin:toy-base" if app.toy else "", max_lines=1, elem_id="reg-model",
                                       label="Alternative model (diffusers folder or Hub id; SD 1.x/2.x or SDXL)")
                reg_lora = gr.Textbox(value="builtin:toy-alt-lora" if app.toy else "", max_lines=1, elem_id="reg-lora",
                                      label="Its LoRA (file, folder or Hub id; empty: none)")
            if app.toy:
                gr.Markdown("On the toy base the fields are prefilled with `subjectgen demo`'s toy-world settings; "
                            "the *method default* in each help line is the published recipe for Stable Diffusion.",
                            elem_id="toy-note")
            inputs = {}
            with gr.Row():
                for field in app.fields:
                    if field.name in MAIN_FIELDS:
                        inputs[field.name] = _component(gr, field, app.initial(field, method0), method0)
            with gr.Accordion("All training options (the flags of `subjectgen train`)", open=False):
                for field in app.fields:
                    if field.name not in MAIN_FIELDS:
                        inputs[field.name] = _component(gr, field, app.initial(field, method0), method0)
            field_inputs = [inputs[f.name] for f in app.fields]
            with gr.Row():
                train = gr.Button("Train", variant="primary", elem_id="train")
                stop = gr.Button("Stop", elem_id="stop")
                resume = gr.Button("Resume", elem_id="resume")
            train_status = gr.Markdown(elem_id="train-status")
            bar = gr.HTML(elem_id="progress-bar")
            progress = gr.Textbox(label="Progress", interactive=False, elem_id="progress", lines=2)
            loss = gr.LinePlot(x="step", y="loss", title="training loss (mean of the last 10 steps)", height=220, elem_id="loss")
            timer = gr.Timer(1.0)
        with gr.Tab("Generate", elem_id="tab-generate"):
            with gr.Row():
                prompt = gr.Textbox(value=(toy_prompts or ["a photo of {} on a beach"])[0], label="Prompt ({} = the subject)",
                                    elem_id="prompt", scale=3)
                prompt_set = gr.Dropdown(toy_prompts + available_prompt_sets(), label="Shipped prompts", elem_id="prompt-set",
                                         scale=1)
            with gr.Row():
                scale = gr.Slider(0.0, 1.5, value=1.0, step=0.05, label="Subject scale", elem_id="scale")
                seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                number = gr.Slider(1, 8, value=2, step=1, label="Images", elem_id="number")
            generate = gr.Button("Generate", variant="primary", elem_id="generate")
            generate_status = gr.Markdown(elem_id="generate-status")
            with gr.Row():
                gallery = gr.Gallery(label="With the subject", columns=4, height=240, elem_id="gallery")
                base_gallery = gr.Gallery(label="Base model, same seeds", columns=4, height=240, elem_id="base-gallery")
        with gr.Tab("Subjects", elem_id="tab-subjects") as subjects_tab:
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

        prepare.click(page_errors(1)(app.prepare), [name, photos], [photos_status, kept])
        sample.click(page_errors(1)(app.use_sample), [name], [photos_status, kept])
        method.change(lambda m: app.method_changed(m), [method], field_inputs)
        reg.change(lambda r: gr.Row(visible=r == "alt"), [reg], [reg_row])
        train.click(page_errors(0)(app.start), [name, method, reg, reg_model, reg_lora, *field_inputs], [train_status])
        stop.click(page_errors(0)(app.stop), [name], [train_status])
        resume.click(page_errors(0)(app.resume), [name], [train_status])
        timer.tick(lambda n: (app.progress_bar(n), app.progress_text(n), app.loss_frame(n)), [name], [bar, progress, loss],
                   show_progress="hidden")
        prompt_set.change(lambda s: s if s and "{}" in s else (s or gr.skip()), [prompt_set], [prompt])
        generate.click(page_errors(2)(app.generate), [name, prompt, scale, seed, number],
                       [generate_status, gallery, base_gallery], concurrency_limit=1, concurrency_id="generation")
        generate_status.change(lambda: app.loaded_text(), None, [loaded])  # Generate may have loaded another subject
        listing = lambda: gr.Dropdown(choices=app.trained_subjects())  # noqa: E731
        refresh.click(listing, None, [subjects])
        subjects_tab.select(listing, None, [subjects])
        page.load(listing, None, [subjects])
        page.load(lambda: app.loaded_text(), None, [loaded])
        # A reopened page shows the training that kept running on the server.
        page.load(lambda: app.queue.latest_subject() or gr.skip(), None, [name])
        subjects.change(lambda s: s or gr.skip(), [subjects], [name])
        load.click(page_errors(1)(app.load), [name], [subjects_status, loaded], concurrency_limit=1,
                   concurrency_id="generation")
        unload.click(page_errors(1)(lambda: app.unload()), None, [subjects_status, loaded], concurrency_id="generation")
        make_zip.click(page_errors(1)(app.download), [name], [subjects_status, download])
        export.click(page_errors(1)(app.export), [name, export_format], [subjects_status, exported])
        push.click(page_errors(1)(app.push), [name, repo, private, token], [subjects_status, token])
    page.subjectgen_app = app
    return page


def label(kind: str, entry: dict, score: str | None) -> str:
    """A gallery caption: whose image, its seed, and its scores when there are any."""
    return f"{kind} · seed {entry['seed']}" + (f" · {score}" if score else "")


def as_text(field: forms.FormField) -> bool:
    """Numbers the recipe decides (TrainConfig default None) are text boxes: empty = "the recipe's value"
    (a gr.Number has no empty state and would send 0)."""
    return field.kind in ("int", "float", "text") and field.default is None


def shown(field: forms.FormField, value):
    if as_text(field):
        return "" if value is None else str(value)
    return bool(value) if field.kind == "bool" else value


def _component(gr, field: forms.FormField, value, method: str):
    label = f"{field.name} ({field.flag})" + (f" · {' / '.join(field.methods)}" if field.methods else "")
    common = dict(label=label, info=field.help or None, elem_id=field.name, visible=field.applies_to(method))
    if field.kind == "bool":
        return gr.Checkbox(value=bool(value), **common)
    if field.kind == "choice":
        return gr.Dropdown([""] + list(field.choices), value=value or "", **common)
    if as_text(field):
        return gr.Textbox(value=shown(field, value), placeholder="empty: the method's recipe", max_lines=1, **common)
    if field.kind == "int":
        return gr.Number(value=value, precision=0, **common)
    if field.kind == "float":
        return gr.Number(value=value, **common)
    return gr.Textbox(value="" if value is None else str(value), max_lines=1, **common)


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
