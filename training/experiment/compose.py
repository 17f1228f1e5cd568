"""Several subjects in one pipeline, measured (the runner's ``compose`` stage; ``subjectgen experiment compose_toy``).

Each subject was trained alone by the runner with ``compose.setup``. For every group of subjects this stage then
samples each subject's prompts under three more conditions and scores them against that subject's photos:

- ``added``: the group's subjects loaded together, their deltas summed (what ``load_subject`` twice does);
- ``merged``: one subject from Custom Diffusion's constrained merge of the group
  (:func:`subjectgen_diffusers.merge.merge_subjects`, regularisation captions: the shipped prompt sets with the class
  phrase, plus the class phrase);
- ``joint``: one run trained on all the group's photos at once, one token per subject (Custom Diffusion's joint
  training; the setup's steps once per subject unless ``joint_steps_per_subject`` is off).

The summary gets ``rows[<subject>][<condition>] = {"likeness": .., "prompt_following": ..}`` with the conditions
``alone``, ``added``, ``merged``, ``joint`` for the largest group (every subject appears there), and ``compose.groups``
with the same rows per group. Likeness is the identity score, prompt-following the prompt scorer's mean.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

CONDITIONS = ("alone", "added", "merged", "joint")


def _scores(run: dict[str, Any]) -> dict[str, float | None]:
    overall = run["overall"]
    pick = lambda key: (overall.get(key) or {}).get("mean")  # noqa: E731
    return {"likeness": pick("identity"), "prompt_following": pick("prompt_following")}


def _merge(base: str, folders: list[Path], out: Path) -> None:
    from diffusers import StableDiffusionPipeline

    from subjectgen_diffusers.merge import merge_subjects
    from subjectgen_diffusers.subject_format import Subject
    from subjectgen_training.commands.merge import class_phrases
    from subjectgen_training.prompts import regularization_captions

    subjects = [Subject.load(folder) for folder in folders]
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    captions = regularization_captions(class_phrases(subjects, None))
    if out.exists():  # a merge stopped before its marker: redo it
        import shutil

        shutil.rmtree(out)
    merge_subjects(pipe, subjects, regularization_captions=captions, out=out)


def _joint(config, layout, setup, group: list, photos: dict[str, str], reg_dir: str | None, base: str,
           out: Path) -> Path:
    from subjectgen_training.experiment.runner import run_stage
    from subjectgen_training.train_config import TrainConfig
    from subjectgen_training.trainer import train

    values = {**config.train, **setup.train}
    if config.compose.joint_steps_per_subject and values.get("steps"):
        values["steps"] = int(values["steps"]) * len(group)
    people = [{"photos": photos[s.name], "token": s.token} for s in group]
    settings = {**values, "base": config.base, "method": setup.method, "regularization": setup.regularization,
                "subjects": [{"photos": s.photos, "token": s.token} for s in group]}
    train_config = TrainConfig.from_dict({**values, "base": base, "method": setup.method, "out": str(out),
                                          "reg_dir": reg_dir, "resume": True, "subjects": people})
    run_stage(layout, f"train-joint-{'+'.join(s.name for s in group)}", settings, lambda: train(train_config))
    return out


def run_compose(config, layout, base: str, photos: dict[str, str], regularization: dict[str, str],
                runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Run every group's conditions (appending their runs to ``runs``); return the summary's compose entries."""
    from subjectgen_training.experiment.runner import _sample_and_score, run_stage

    spec = config.compose
    setup = next(s for s in config.setups if s.name == spec.setup)
    reg_dir = regularization.get(setup.regularization) if setup.regularization else None
    by_name = {s.name: s for s in config.subjects}
    alone = {run["subject"]: run for run in runs if run["setup"] == setup.name}
    folders = {name: layout.run(name, setup.name) / "subject" for name in by_name}
    groups = []
    for names in spec.groups:
        key = "+".join(names)
        group = [by_name[n] for n in names]
        merged = layout.root / "compose" / key / "merged"
        run_stage(layout, f"merge-{key}", {"subjects": names, "setup": setup.name},
                  lambda: _merge(base, [folders[n] for n in names], merged))
        joint = _joint(config, layout, setup, group, photos, reg_dir, base, layout.root / "compose" / key / "joint")
        rows: dict[str, dict[str, Any]] = {}
        for subject in group:
            token = subject.token
            others = [folders[n] for n in names if n != subject.name]
            conditions = {
                "added": _sample_and_score(config, layout, subject.name, f"added-{key}", folders[subject.name],
                                           photos[subject.name], base, also_load=others, token=token),
                "merged": _sample_and_score(config, layout, subject.name, f"merged-{key}", merged,
                                            photos[subject.name], base, token=token),
                "joint": _sample_and_score(config, layout, subject.name, f"joint-{key}", joint,
                                           photos[subject.name], base, token=token),
            }
            runs += [{**run, "condition": name, "group": names} for name, run in conditions.items()]
            rows[subject.name] = {"alone": _scores(alone[subject.name]),
                                  **{name: _scores(run) for name, run in conditions.items()}}
        merge_record = _read_merge_record(merged)
        groups.append({"subjects": names, "rows": rows, "merge": merge_record})
    largest = max(groups, key=lambda g: len(g["subjects"]))
    return {
        "rows": largest["rows"],
        "compose": {"setup": setup.name, "conditions": list(CONDITIONS), "rows_group": largest["subjects"],
                    "groups": groups, "spec": dataclasses.asdict(spec)},
    }


def _read_merge_record(folder: Path) -> dict[str, Any]:
    import json

    config = json.loads((folder / "subject_config.json").read_text(encoding="utf-8"))
    record = config["training"]["merge"]
    return {"max_relative_constraint_error": record["max_relative_constraint_error"],
            "regularization_captions": len(record["regularization_captions"]),
            "constraint_captions": record["constraint_captions"],
            "summed_projections": len(record["summed_projections"])}
