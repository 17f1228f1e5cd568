"""The Train tab of ``subjectgen ui``: the method, regularisation images and every ``subjectgen train`` field (the
form is generated from the same definitions as the flags, :mod:`subjectgen_training.ui.forms`; a method's own fields
show when it is chosen), then a queued training job with its progress and loss curve."""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from pathlib import Path

from subjectgen_diffusers.errors import SubjectgenError
from subjectgen_training.ui import forms
from subjectgen_training.ui.workdir import WorkdirError, resolve_base

EXTRA_KEYS = ("effective_lr", "effective_token_lr", "num_processes")  # train_config.json keys that are not config
MAIN_FIELDS = ("steps", "lr", "token_lr")  # shown above the fold; the rest sit under "All training options"


def toy_preset() -> dict:
    """The toy demo's training settings (``subjectgen demo``): what learns on the shipped toy base."""
    from subjectgen_training.experiment.demos import toy_demo_config

    config = toy_demo_config(steps=300)
    preset = {**config.train, **config.setups[0].train}
    preset.pop("checkpoint_every")  # the page checkpoints every tenth of the steps, so Stop can always resume
    preset.pop("reg_weight")  # CR's pull belongs to the methods with cross-initialised tokens; the form is for all
    return preset


class TrainTab:
    """The App's Train actions."""

    def method_changed(self, method: str):
        """The form for ``method``: each field's recipe value, and only this method's own fields shown."""
        import gradio as gr

        return [gr.update(value=shown(field, self.initial(field, method)), visible=field.applies_to(method))
                for field in self.fields]

    def start(self, name: str, method: str, reg: str, reg_model: str, reg_lora: str, *values):
        from subjectgen_training.trainer.config import TrainConfig

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
        from subjectgen_training.trainer.checkpoints import checkpoint_dir

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
        from subjectgen_training.models.builtin_models import resolve_model
        from subjectgen_training.sampling.regularize import RegularizeConfig, generate_regularization

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
        from subjectgen_training.trainer.checkpoints import list_checkpoints

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
        from subjectgen_training.trainer.config import TrainConfig

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


def layout(gr, app, name) -> None:
    """The tab's components and their events (inside ``gr.Tab("Train")``)."""
    from subjectgen_training.methods import REGISTRY
    from subjectgen_training.trainer.config import DEFAULT_METHOD
    from subjectgen_training.ui.handlers import page_errors

    methods = list(REGISTRY)
    method0 = DEFAULT_METHOD
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

    method.change(lambda m: app.method_changed(m), [method], field_inputs)
    reg.change(lambda r: gr.Row(visible=r == "alt"), [reg], [reg_row])
    train.click(page_errors(0)(app.start), [name, method, reg, reg_model, reg_lora, *field_inputs], [train_status])
    stop.click(page_errors(0)(app.stop), [name], [train_status])
    resume.click(page_errors(0)(app.resume), [name], [train_status])
    timer.tick(lambda n: (app.progress_bar(n), app.progress_text(n), app.loss_frame(n)), [name], [bar, progress, loss],
               show_progress="hidden")


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
