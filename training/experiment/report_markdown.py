"""``summary.md``: an experiment's tables (per subject, pooled, across subjects, composition) in markdown."""

from __future__ import annotations

from typing import Any

from subjectgen_training.experiment.report_tables import ORDER, PART_LABELS, columns, result_sentence, table_header, table_row


def across_subjects_markdown(summary: dict[str, Any]) -> list[str]:
    """Per subject group: the spread over subjects of each setup's per-subject mean, and how many beat the baseline."""
    lines: list[str] = []
    for group, table in (summary.get("across_subjects") or {}).items():
        setups = table["setups"]
        metrics: list[str] = []
        for entry in setups.values():
            metrics += [k for k in entry["scores"] if k not in metrics]
        metrics.sort(key=lambda m: (ORDER.index(m) if m in ORDER else len(ORDER), m))
        lines += [f"## {group} subjects ({len(table['subjects'])}): mean ± std over subjects", "",
                  "| setup | beats baseline | " + " | ".join(PART_LABELS.get(m, m) for m in metrics) + " |",
                  "| --- | ---: |" + " ---: |" * len(metrics)]
        for name, entry in setups.items():
            beats = f"{entry['beats_baseline']}/{len(table['subjects'])}" if "beats_baseline" in entry else "–"
            cells = [f"{entry['scores'][m]['mean']:.3f} ± {entry['scores'][m]['std']:.3f}" if m in entry["scores"]
                     else "–" for m in metrics]
            lines.append(f"| {name} | {beats} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def compose_markdown(summary: dict[str, Any]) -> list[str]:
    """Per group of composed subjects: likeness and prompt-following of each subject under every condition, and
    each condition's difference from ``alone`` (the experiment's ``compose`` stage)."""
    compose = summary.get("compose")
    if not compose:
        return []
    conditions = compose["conditions"]
    lines = ["## several subjects in one pipeline", "",
             f"Each subject trained alone with `{compose['setup']}`; `added`: the group's subjects loaded together "
             "(deltas summed); `merged`: Custom Diffusion's constrained merge of the group; `joint`: one run on all "
             "the group's photos, one token each. Likeness / prompt-following, mean over the subject's images; "
             "Δ: difference from alone.", ""]
    for group in compose["groups"]:
        lines += [f"### {' + '.join(group['subjects'])}", "",
                  "| subject | " + " | ".join(conditions) + " | " + " | ".join(f"Δ {c}" for c in conditions[1:]) + " |",
                  "| --- |" + " ---: |" * (2 * len(conditions) - 1)]
        for name, row in group["rows"].items():
            def pair(scores: dict[str, Any]) -> str:
                return " / ".join("–" if v is None else f"{v:.3f}" for v in (scores["likeness"], scores["prompt_following"]))

            def delta(condition: str) -> str:
                base, other = row["alone"], row[condition]
                return " / ".join("–" if a is None or b is None else f"{b - a:+.3f}"
                                  for a, b in ((base["likeness"], other["likeness"]),
                                               (base["prompt_following"], other["prompt_following"])))

            lines.append(f"| {name} | " + " | ".join(pair(row[c]) for c in conditions) + " | "
                         + " | ".join(delta(c) for c in conditions[1:]) + " |")
        merge = group.get("merge") or {}
        if merge:
            lines.append("")
            lines.append(f"Merge: {merge['regularization_captions']} regularisation captions, largest relative "
                         f"constraint error {merge['max_relative_constraint_error']:.1e}.")
        lines.append("")
    return lines


def render_markdown(summary: dict[str, Any]) -> str:
    """Per subject: a table of setups (overall scores), then identity per setup and prompt."""
    lines = [f"# {summary.get('experiment', 'experiment')}", ""]
    if summary.get("description"):
        lines += [summary["description"], ""]
    lines += [f"_{summary.get('protocol', '')}_", ""]
    results = [sentence for subject in summary["subjects"] if (sentence := result_sentence(summary, subject["name"]))]
    if results:
        lines += [" ".join(results), ""]
    cols = columns([run["overall"] for run in summary["runs"]])
    if summary.get("identity_measure"):
        lines += [f"Likeness: {summary['identity_measure']}.", ""]
    if summary.get("prompt_measure") == "prompt-following":
        lines += ["Prompt-following: the share of the requested background and accessory that the pixel rules find; "
                  "`X asked, found`: the rate at which that request was met. Mean ± std over images.", ""]
    else:
        lines += ["CLIP-T: cosine of image and prompt (subject token replaced by a plain phrase); CLIP-I: mean cosine "
                  "with the reference photos. Mean ± std.", ""]
    lines += compose_markdown(summary)
    if len(summary["subjects"]) > 1 and summary.get("per_setup"):
        lines += across_subjects_markdown(summary)
        lines += ["## all subjects' images pooled", "", *table_header(cols)]
        lines += [table_row(name, stats, cols) for name, stats in summary["per_setup"].items()]
        lines.append("")
    for subject in summary["subjects"]:
        runs = [run for run in summary["runs"] if run["subject"] == subject["name"]]
        title = subject["name"] + (f" ({subject['group']})" if subject.get("group") else "")
        lines += [f"## {title}", "", *table_header(cols)]
        lines += [table_row(run["setup"], run["overall"], cols) for run in runs]
        prompts = summary.get("prompts", [])
        if prompts and runs:
            lines += ["", "Likeness per prompt (mean):", "",
                      "| setup | " + " | ".join(p.replace("|", "/") for p in prompts) + " |",
                      "| --- |" + " ---: |" * len(prompts)]
            for run in runs:
                cells = []
                for prompt in prompts:
                    stat = run.get("per_prompt", {}).get(prompt, {}).get("identity")
                    cells.append(f"{stat['mean']:.3f}" if stat else "–")
                lines.append(f"| {run['setup']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
