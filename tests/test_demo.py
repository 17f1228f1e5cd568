"""`subjectgen demo`: offline, sample photos -> train CD+CR -> generate -> evaluate -> report, ending with where to look."""

from __future__ import annotations

import json
import re

import pytest

from _cli import REPO_ROOT, run_cli
from subjectgen_diffusers.subject_format import Subject


@pytest.mark.slow
def test_demo_runs_offline_and_says_where_to_look(tmp_path):
    out = tmp_path / "demo"
    proc = run_cli("demo", "--real-photos", "--out", "demo", "--steps", "2", cwd=tmp_path)  # relative --out, as a newcomer types it
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"report (open in a browser): {out / 'report.html'}" in proc.stdout
    assert "subjectgen experiment five_setups" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    baseline, run = summary["runs"]
    assert baseline["setup"] == "baseline" and baseline["overall"]["count"] == 8
    assert run["setup"] == "cd+cr" and run["overall"]["count"] == 8 and run["overall"]["clip_text"] is None
    subject = Subject.load(out / "runs" / "astronaut" / "cd+cr" / "subject")
    assert subject.config.method == "cd+cr" and subject.config.num_vectors == 2
    prepared = out / "subjects" / "astronaut" / "photos" / "prepared"
    # trained and evaluated on the prepared crops
    assert (tmp_path / summary["subjects"][0]["photos"]).resolve() == prepared.resolve()
    assert (prepared / "prepare.json").is_file() and len(list(prepared.glob("*.mask.png"))) >= 4
    assert len(summary["subjects"][0]["reference"]) >= 4
    report = (out / "report.html").read_text()
    assert report.count("<img") == len(summary["subjects"][0]["reference"]) + 2 * 8
    # each picture is held in the page (a data: URI) and links to its full image beside the report
    sources = re.findall(r'<img src="([^"]+)"', report)
    assert sources and all(src.startswith("data:image/png;base64,") for src in sources)
    links = re.findall(r'<a href="([^"]+)"><img', report)
    missing = [href for href in links if not (out / href).is_file()]
    assert len(links) == len(sources) and not missing, f"report.html links to missing images: {missing[:3]}"


def test_demo_names_scikit_image_when_it_is_missing(tmp_path):
    shadow = tmp_path / "shadow" / "skimage"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('scikit-image hidden for this test')\n")
    proc = run_cli("demo", "--real-photos", "--out", str(tmp_path / "demo"), env={"PYTHONPATH": f"{tmp_path / 'shadow'}:{REPO_ROOT}"})
    assert proc.returncode == 2
    assert "pip install scikit-image" in proc.stderr and proc.stderr.startswith("error: ")
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow
@pytest.mark.skipif(not (REPO_ROOT / "training" / "toy" / "weights" / "toy-base" / "model_index.json").is_file(),
                    reason="toy weights not shipped")
def test_default_demo_learns_the_toy_subject_and_says_where_to_look(tmp_path):
    out = tmp_path / "demo"
    proc = run_cli("demo", "--out", "demo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"report (open in a browser): {out / 'report.html'}" in proc.stdout
    assert "| cd+cr-reg | 16 |" in proc.stdout  # the scores table is printed
    summary = json.loads((out / "summary.json").read_text())  # the one runner's summary, as five_setups writes it
    baseline, learned = (run["overall"] for run in summary["runs"])
    assert [run["setup"] for run in summary["runs"]] == ["baseline", "cd+cr-reg"]
    assert summary["subjects"][0]["source"] == "toy:shipped"
    # the subject is learned, hidden mark included ...
    assert learned["identity"]["mean"] >= baseline["identity"]["mean"] + 0.3, summary["runs"]
    assert learned["identity_parts"]["hidden_mark"]["mean"] >= 0.5, learned
    # ... and drawn in scenes its photos never show (yellow and purple backgrounds)
    assert learned["prompt_checks"]["background"]["mean"] >= 0.9, learned
    assert learned["prompt_following"]["mean"] >= baseline["prompt_following"]["mean"] - 0.2, summary["runs"]
    subject = Subject.load(out / "runs" / "shipped" / "cd+cr-reg" / "subject")
    assert subject.config.method == "cd+cr"
    report = (out / "report.html").read_text()
    sources = re.findall(r'<img[^>]* src="([^"]+)"', report)
    assert len(sources) == 6 + 2 * 4 * 2  # the six photos, two images per prompt per row
    assert all(src.startswith("data:image/png;base64,") for src in sources)  # the page holds its pictures
    links = re.findall(r'<a href="([^"]+)"><img', report)
    assert len(links) == len(sources) and all((out / href).is_file() for href in links)
