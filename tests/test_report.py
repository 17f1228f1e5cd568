"""The reporter: summary.md tables and report.html (grid, references, plot) from JSON alone; headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from subjectgen_training.evaluation import metrics
from subjectgen_training.experiment.report import GRID_FRAME, PLOT_BACKGROUND, SETUP_COLOURS, ReportError, write_report

PROMPTS = ["a photo of {}", "a pencil sketch of {}"]
SETUPS = ["cd-noreg", "cr"]


def _hex(colour):
    return np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])


@pytest.fixture
def experiment_dir(tmp_path):
    """An experiment folder as the runner lays it out: per-run images + results.json, and summary.json."""
    reference = tmp_path / "photos"
    reference.mkdir()
    Image.new("RGB", (64, 64), (200, 150, 120)).save(reference / "ref0.png")
    runs = []
    for s, setup in enumerate(SETUPS):
        run_dir = tmp_path / "runs" / "anna" / setup
        (run_dir / "images").mkdir(parents=True)
        entries = []
        for p, prompt in enumerate(PROMPTS):
            for k in range(2):
                name = f"{p:03d}-{k:02d}.png"
                Image.new("RGB", (64, 64), (40 * s + 20 * p, 90, 60 * k)).save(run_dir / "images" / name)
                found = not (s == 1 and k == 1)
                entries.append({"file": name, "prompt": prompt, "face_found": found,
                                "identity": (0.5 + 0.2 * s + 0.05 * k) if found else 0.0,
                                "clip_text": 0.25 + 0.03 * p - 0.02 * s, "clip_image": 0.6})
        results = {"images": entries, "settings": {"images": str(run_dir / "images")},
                   "summary": {"overall": metrics.summarize(entries),
                               "per_prompt": metrics.summarize_by(entries, "prompt")}}
        (run_dir / "results.json").write_text(json.dumps(results))
        runs.append({"subject": "anna", "setup": setup, "results": f"runs/anna/{setup}/results.json",
                     "images": f"runs/anna/{setup}/images", **{"overall": results["summary"]["overall"],
                                                               "per_prompt": results["summary"]["per_prompt"]}})
    summary = {"experiment": "two setups", "description": "test", "protocol": metrics.PROTOCOL_NOTE,
               "identity_measure": "max(0, 1 - Euclidean distance) of dlib 128-d descriptors",
               "prompts": PROMPTS, "subjects": [{"name": "anna", "reference": [str(reference / "ref0.png")]}],
               "setups": [{"name": name, "description": f"the {name} setup"} for name in SETUPS], "runs": runs}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    return tmp_path


def test_markdown_and_html_hold_every_setup_prompt_and_score(experiment_dir):
    markdown, page = write_report(experiment_dir / "summary.json")
    text = markdown.read_text()
    overall_cr = json.loads((experiment_dir / "summary.json").read_text())["runs"][1]["overall"]
    assert f"| cr | 4 | 50% | {overall_cr['identity']['mean']:.3f} ± {overall_cr['identity']['std']:.3f} |" in text
    assert "| cd-noreg | 4 | 100% |" in text and "likeness (identity) 0" in text and "Likeness: max(0, 1 - Euclidean" in text
    assert "| setup | a photo of {} | a pencil sketch of {} |" in text
    source = page.read_text()
    assert source.count("<img") == 1 + len(SETUPS) * len(PROMPTS) * 2  # reference + grid (2 per cell)
    assert 'href="runs/anna/cr/images/001-01.png"' in source and 'href="photos/ref0.png"' in source
    assert source.count('src="data:image/png;base64,') == source.count("<img")  # the page holds its pictures
    assert source.count("<circle") == 2 * len(SETUPS)  # a dot and a legend mark per setup


def test_report_names_what_is_missing(tmp_path):
    with pytest.raises(ReportError, match="run the experiment"):
        write_report(tmp_path / "summary.json")
    (tmp_path / "summary.json").write_text(json.dumps({"runs": []}))
    with pytest.raises(ReportError, match="lacks `subjects`"):
        write_report(tmp_path / "summary.json")


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="headless Chromium not installed (Debian: apt-get install chromium); report screenshot not checked")
def test_report_renders_grid_and_plot_in_headless_chromium(experiment_dir, tmp_path):
    _, page = write_report(experiment_dir / "summary.json")
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={shot}",
         "--window-size=1200,1400", "--user-data-dir=" + str(tmp_path / "profile"), page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)

    def count(colour, tolerance=6):
        return int((np.abs(pixels - _hex(colour)).max(-1) <= tolerance).sum())

    assert count(PLOT_BACKGROUND) > 5000  # the plot panel
    assert count(SETUP_COLOURS[0]) > 100 and count(SETUP_COLOURS[1]) > 100  # one dot + legend per setup
    assert count(GRID_FRAME) > 1000  # the grid's frame
    # the grid's images are drawn at 96x96: each of the first cell's two samples is found
    assert count("#005a00", tolerance=2) >= 90 * 90 and count("#005a3c", tolerance=2) >= 90 * 90


def test_several_subjects_get_their_own_tables_and_a_pooled_one(experiment_dir):
    path = experiment_dir / "summary.json"
    summary = json.loads(path.read_text())
    summary["subjects"].append({"name": "ben", "reference": []})
    summary["runs"] += [{**run, "subject": "ben"} for run in summary["runs"]]
    summary["per_setup"] = {}
    for setup in SETUPS:
        images = []
        for run in summary["runs"]:
            if run["setup"] == setup:
                images += json.loads((experiment_dir / run["results"]).read_text())["images"]
        summary["per_setup"][setup] = metrics.summarize(images)
    path.write_text(json.dumps(summary))
    markdown, page = write_report(path)
    text = markdown.read_text()
    pooled = text.split("## all subjects")[1].split("## anna")[0]
    assert "| cr | 8 | 50% |" in pooled and "| cd-noreg | 8 | 100% |" in pooled
    assert "## ben" in text and page.read_text().count("<h2>") == 2


def test_toy_scores_get_their_columns_and_the_across_subject_spread_is_reported(tmp_path):
    """A toy-world summary (likeness parts, prompt-following, each request's rate) reads like a five_setups one."""
    from subjectgen_training.experiment.config import ExperimentConfig, SetupSpec, SubjectSpec
    from subjectgen_training.experiment.runner import across_subjects

    def image(identity, mark, following, checks):
        return {"file": "x.png", "prompt": "{}, wearing a hat, on a purple background", "face_found": True,
                "identity": identity, "clip_text": None, "clip_image": None,
                "identity_parts": {"hidden_mark": mark, "traits": 2 * identity - mark},
                "prompt_following": following, "prompt_checks": checks}

    scores = {("s1", "baseline"): (0.2, 0.0), ("s1", "cd"): (0.8, 1.0), ("s2", "baseline"): (0.3, 0.0),
              ("s2", "cd"): (0.25, 0.0)}
    runs = []
    for (subject, setup), (identity, mark) in scores.items():
        entries = [image(identity, mark, 1.0, {"background": 1.0, "hat": 1.0}),
                   image(identity, mark, 0.5, {"background": 1.0, "hat": 0.0})]
        runs.append({"subject": subject, "setup": setup, "results": "r.json", "images": "i",
                     "overall": metrics.summarize(entries), "per_prompt": {}})
    (tmp_path / "r.json").write_text(json.dumps({"images": [], "settings": {}}))
    config = ExperimentConfig(name="toy", base="b", subjects=[SubjectSpec("s1", "toy:seed=1", group="test"),
                                                              SubjectSpec("s2", "toy:seed=2", group="test")],
                              setups=[SetupSpec("cd", "cd")])
    spread = across_subjects(config, runs)["test"]["setups"]["cd"]
    assert spread["beats_baseline"] == 1  # s2's cd row is below its baseline
    assert spread["scores"]["identity"]["mean"] == pytest.approx(0.525)
    assert spread["vs_baseline"]["identity"]["min"] == pytest.approx(-0.05)
    assert spread["scores"]["hat"]["mean"] == 0.5
    summary = {"experiment": "toy", "prompt_measure": "prompt-following", "prompts": [],
               "subjects": [{"name": "s1", "group": "test"}, {"name": "s2", "group": "test"}],
               "setups": [{"name": "baseline"}, {"name": "cd"}], "runs": runs,
               "per_setup": {"cd": runs[1]["overall"]}, "across_subjects": across_subjects(config, runs)}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    markdown, page = write_report(tmp_path / "summary.json")
    text = markdown.read_text()
    assert ("| setup | images | face detection | likeness | hidden mark | traits | prompt-following | "
            "background asked, found | hat asked, found |") in text
    assert "CLIP-T" not in text.split("## test subjects")[1]  # no CLIP columns for a toy scorer
    assert "## test subjects (2): mean ± std over subjects" in text and "| cd | 1/2 | 0.525 ± 0.275 |" in text
    assert "prompt-following (mean)" in page.read_text()  # the plot's x axis


def test_the_report_says_likeness_and_its_result_in_one_sentence(experiment_dir):
    """The README's word (likeness), one sentence with the result, axes that stop at 1.0, cells that say how many of
    their images they show, and a page that keeps its pictures when copied alone (issue 24, item 8)."""
    path = experiment_dir / "summary.json"
    summary = json.loads(path.read_text())
    summary["runs"][0]["setup"] = "baseline"
    summary["setups"][0]["name"] = "baseline"
    summary["runs"][1]["overall"]["identity"]["mean"] = 0.97  # near the top: the plot's axis must stop at 1.0
    path.write_text(json.dumps(summary))
    markdown, page = write_report(path, per_cell=1)
    text, source = markdown.read_text(), page.read_text()
    sentence = "Result: cr draws anna with likeness 0.97 against 0.53 for the untrained baseline, CLIP-T 0.24 (baseline 0.27)."
    assert sentence in text and sentence in source
    assert "identity" not in text.replace("likeness (identity)", "")  # the README's word; the JSON key named once
    assert "likeness against prompt score" in source and ">identity" not in source
    ticks = [float(t) for t in re.findall(r'text-anchor="end">([0-9.]+)</text>', source)]
    assert ticks and max(ticks) <= 1.0
    assert source.count("1 of 2 images shown") == len(SETUPS) * len(PROMPTS)
    alone = experiment_dir / "elsewhere"
    alone.mkdir()
    shutil.copy(page, alone / "report.html")
    assert "<img src=\"runs/" not in (alone / "report.html").read_text() and "<img src=\"photos/" not in source
