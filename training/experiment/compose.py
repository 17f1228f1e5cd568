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
    from subjectgen_training.prompts import class_phrases
    from subjectgen_training.prompts import regularization_captions

    subjects = [Subject.load(folder) for folder in folders]
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    captions = regularization_captions(class_phrases(subjects, None))
    if out.exists():  # a merge stopped before its marker: redo it
        import shutil

        shutil.rmtree(out)
    merge_subjects(pipe, subjects, regularization_captions=captions, out=out)


def _joint_stage(graph, config, layout, setup, group: list, photos: dict[str, tuple], reg: tuple | None, base: str,
                 out: Path) -> str:
    from subjectgen_training.experiment.stages import make_stage
    from subjectgen_training.trainer.config import TrainConfig
    from subjectgen_training.trainer.loop import train

    values = {**config.train, **setup.train}
    if config.compose.joint_steps_per_subject and values.get("steps"):
        values["steps"] = int(values["steps"]) * len(group)
    people = [{"photos": photos[s.name][0], "token": s.token} for s in group]
    settings = {**values, "base": config.base, "method": setup.method, "regularization": setup.regularization,
                "subjects": [{"photos": s.photos, "token": s.token} for s in group]}
    train_config = TrainConfig.from_dict({**values, "base": base, "method": setup.method, "out": str(out),
                                          "reg_dir": reg[0] if reg else None, "resume": True, "subjects": people})
    needs = [photos[s.name][1] for s in group] + [reg[1] if reg else None]
    return graph.add(make_stage(layout, f"train-joint-{'+'.join(s.name for s in group)}", settings,
                            lambda: train(train_config), needs=needs, kind="train"))


def compose_stages(graph, config, layout, base: str, photos: dict[str, tuple], regularization: dict[str, tuple],
                   trained: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
    """Add every group's stages (merge, joint training, then each condition's sampling and scoring) to ``graph``;
    return what :func:`compose_summary` reads."""
    from subjectgen_training.experiment.stages import make_stage, sample_and_score_stages

    spec = config.compose
    setup = next(s for s in config.setups if s.name == spec.setup)
    reg = regularization.get(setup.regularization) if setup.regularization else None
    by_name = {s.name: s for s in config.subjects}
    folders = {name: layout.run(name, setup.name) / "subject" for name in by_name}
    plans = []
    for names in spec.groups:
        key = "+".join(names)
        group = [by_name[n] for n in names]
        merged = layout.root / "compose" / key / "merged"
        merge_stage = graph.add(make_stage(layout, f"merge-{key}", {"subjects": names, "setup": setup.name},
                                       lambda names=names, merged=merged: _merge(base, [folders[n] for n in names],
                                                                                 merged),
                                       needs=[trained[(n, setup.name)] for n in names], kind="merge"))
        joint = layout.root / "compose" / key / "joint"
        joint_stage = _joint_stage(graph, config, layout, setup, group, photos, reg, base, joint)
        for subject in group:
            others = [folders[n] for n in names if n != subject.name]
            own = photos[subject.name]
            alone = [trained[(n, setup.name)] for n in names]
            for condition, folder, also, needs in (("added", folders[subject.name], others, alone),
                                                   ("merged", merged, None, [merge_stage]),
                                                   ("joint", joint, None, [joint_stage])):
                sample_and_score_stages(graph, config, layout, subject.name, f"{condition}-{key}", folder, own[0],
                                         base, also_load=also, token=subject.token, needs=(*needs, own[1]))
        plans.append({"names": names, "merged": merged})
    return plans


def compose_summary(config, layout, plans: list[dict[str, Any]], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary's compose entries from the finished stages (appending the conditions' runs to ``runs``)."""
    from subjectgen_training.experiment.stages import run_record

    spec = config.compose
    alone = {run["subject"]: run for run in runs if run["setup"] == spec.setup}
    groups = []
    for plan in plans:
        names = plan["names"]
        key = "+".join(names)
        rows: dict[str, dict[str, Any]] = {}
        for name in names:
            conditions = {condition: run_record(layout, name, f"{condition}-{key}")
                          for condition in ("added", "merged", "joint")}
            runs += [{**run, "condition": condition, "group": names} for condition, run in conditions.items()]
            rows[name] = {"alone": _scores(alone[name]), **{c: _scores(run) for c, run in conditions.items()}}
        groups.append({"subjects": names, "rows": rows, "merge": _read_merge_record(plan["merged"])})
    largest = max(groups, key=lambda g: len(g["subjects"]))
    return {
        "rows": largest["rows"],
        "compose": {"setup": spec.setup, "conditions": list(CONDITIONS), "rows_group": largest["subjects"],
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
