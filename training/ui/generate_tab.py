"""The Generate tab of ``subjectgen ui``: the subject (kept loaded) and the base model on the same seeds, each
image labelled with its ``subjectgen evaluate`` scores."""

from __future__ import annotations

import logging
from pathlib import Path

from subjectgen_training.ui.workdir import WorkdirError

logger = logging.getLogger(__name__)


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


class GenerateTab:
    """The App's Generate actions."""

    def generate(self, name: str, prompt: str, scale: float, seed: float, number: float):
        from subjectgen_training.sampling.generate import GenerateConfig, generate_images, read_manifest

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


def label(kind: str, entry: dict, score: str | None) -> str:
    """A gallery caption: whose image, its seed, and its scores when there are any."""
    return f"{kind} · seed {entry['seed']}" + (f" · {score}" if score else "")


def layout(gr, app, name):
    """The tab's components and their events (inside ``gr.Tab("Generate")``); returns its status line."""
    from subjectgen_training.prompts import available_prompt_sets
    from subjectgen_training.ui.handlers import page_errors

    toy_prompts = []
    if app.toy:
        from subjectgen_training.experiment.demos import TOY_PROMPTS

        toy_prompts = list(TOY_PROMPTS)
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

    prompt_set.change(lambda s: s if s and "{}" in s else (s or gr.skip()), [prompt_set], [prompt])
    generate.click(page_errors(2)(app.generate), [name, prompt, scale, seed, number],
                   [generate_status, gallery, base_gallery], concurrency_limit=1, concurrency_id="generation")
    return generate_status
