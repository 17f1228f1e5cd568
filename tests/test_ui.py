"""``subjectgen ui``: the form comes from the CLI's definitions, uploads are checked, and the page works in a real
Chromium (Debian's, driven by Playwright) on the shipped toy model: photos -> training -> images -> zip."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from subjectgen_training.ui import forms
from subjectgen_training.ui.uploads import MAX_FILES, safe_name, store_uploads

CHROMIUM = os.environ.get("SUBJECTGEN_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = os.environ.get("SUBJECTGEN_UI_SCREENSHOTS")  # a folder: the README's screenshots are written there


# -- one definition of each training field ------------------------------------------------------------------------
def test_every_form_field_is_a_train_flag_and_a_trainconfig_field_with_the_flags_help():
    from subjectgen_training.trainer.config import TrainConfig

    parser = forms.train_parser()
    actions = {a.dest: a for a in parser._actions}  # noqa: SLF001
    fields = forms.train_form_fields()
    assert {"steps", "lr", "token_lr", "cd_scope", "mask_loss"} <= {f.name for f in fields}
    for field in fields:
        assert field.name in TrainConfig.file_keys()  # a shared field, or a method's own (TrainConfig.options)
        assert field.flag in actions[field.name].option_strings
        assert field.help == (actions[field.name].help or "")
    cd_scope = next(f for f in fields if f.name == "cd_scope")
    assert cd_scope.kind == "choice" and set(cd_scope.choices) == set(actions["cd_scope"].choices)


def test_a_field_added_to_trainconfig_appears_in_train_help_and_in_the_page(monkeypatch, tmp_path, capsys):
    """The field is written once (a TrainConfig field with its help); `train --help` and the UI form both show it."""
    import subjectgen_training.trainer.config as train_config
    from subjectgen_training.cli import main
    from subjectgen_training.config_flags import option
    from subjectgen_training.ui.app import UISettings, build_app

    @dataclasses.dataclass
    class WithEma(train_config.TrainConfig):
        ema_decay: float | None = option(None, help="decay of an exponential moving average of the weights")

    monkeypatch.setattr(train_config, "TrainConfig", WithEma)

    assert "--ema-decay" in forms.train_parser().format_help()
    field = next(f for f in forms.train_form_fields() if f.name == "ema_decay")
    assert (field.flag, field.kind) == ("--ema-decay", "float")
    assert field.help == "decay of an exponential moving average of the weights (default: none)"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "decay of an exponential moving average" in capsys.readouterr().out
    page = build_app(UISettings(workdir=str(tmp_path)))
    props = [c.get("props", {}) for c in page.config["components"]]
    ema = [p for p in props if p.get("elem_id") == "ema_decay"]
    assert len(ema) == 1 and ema[0]["info"] == field.help


def test_form_values_are_typed_and_empty_means_the_recipe():
    fields = {f.name: f for f in forms.train_form_fields()}
    chosen = [fields["steps"], fields["lr"], fields["cd_scope"], fields["prompt"]]
    assert forms.read_form(chosen, ["30", "0.001", "", "  "]) == {"steps": 30, "lr": 0.001}
    with pytest.raises(forms.FormError, match="--steps must be a whole number"):
        fields["steps"].read("2.5")
    with pytest.raises(forms.FormError, match="--lr must be a number"):
        fields["lr"].read("fast")
    # prefilled from the method's own recipe (training/methods), not from a copy
    from subjectgen_training.methods import get_method

    assert forms.initial_value(fields["token_lr"], "cr") == get_method("cr").defaults["token_lr"]


def test_the_prompt_box_takes_text_or_a_shipped_set_but_never_reads_a_server_file(tmp_path):
    from subjectgen_training.prompts import load_prompts
    from subjectgen_training.ui.app import page_prompts
    from subjectgen_training.ui.workdir import WorkdirError

    assert page_prompts("a {} | {} smiling") == ["a {}", "{} smiling"]
    assert page_prompts("accessories") == load_prompts("accessories")
    secret = tmp_path / "secret.txt"
    secret.write_text("a {} with the secret\n")
    for text in (str(secret), "../secret.txt", "secret.txt"):
        with pytest.raises(WorkdirError, match="does not read files"):
            page_prompts(text)
    with pytest.raises(WorkdirError, match="needs {}"):
        page_prompts("a photo of a dog")


# -- uploads -------------------------------------------------------------------------------------------------------
def test_file_names_are_sanitised():
    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name("..\\..\\x y$.png") == "x_y_.png"
    assert safe_name(".hidden.png") == "hidden.png"
    assert safe_name("") == "photo"


def test_uploads_keep_images_and_refuse_text_large_files_bombs_and_more_than_50(tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (64, 64), "red").save(src / "face one.jpg")
    (src / "notes.png").write_text("this is text, named like an image")
    (src / "big.png").write_bytes(b"\x89PNG" + b"\0" * (20 * 2**20 + 1))
    Image.new("RGB", (64, 64), "blue").save(src / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 = 4096 > 2 x 1000: Pillow's bomb error
    result = store_uploads([src / "face one.jpg", src / "notes.png", src / "big.png", src / "bomb.png"], tmp_path / "out")
    monkeypatch.undo()
    assert [p.name for p in result.saved] == []  # the jpg is 4096 pixels too: refused as a bomb under this limit
    why = dict(result.refused)
    assert "not an image" in why["notes.png"] and "20 MB" in why["big.png"] and "decompression-bomb" in why["bomb.png"]

    result = store_uploads([src / "face one.jpg"] * 3, tmp_path / "out", already=MAX_FILES - 2)
    assert [p.name for p in result.saved] == ["face_one.jpg", "face_one_2.jpg"]
    assert result.refused == [("face_one.jpg", f"more than {MAX_FILES} photos for one subject")]


# -- the page in Chromium ----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """The page served by the real launch() in this process (HTTP only: no browser needed); (url, workdir)."""
    pytest.importorskip("gradio")
    import torch

    from subjectgen_training.toy.models import WEIGHTS
    from subjectgen_training.ui.app import UISettings, launch

    if not (WEIGHTS / "toy-base" / "model_index.json").is_file():
        pytest.skip("the shipped toy model is missing")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    temp_dir = os.environ.get("GRADIO_TEMP_DIR")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    workdir = tmp_path_factory.mktemp("ui") / "work"
    port = free_port()
    page = launch(UISettings(workdir=str(workdir)), port=port, prevent_thread_lock=True)
    yield f"http://127.0.0.1:{port}", workdir
    page.close()
    torch.set_num_threads(threads)
    if temp_dir is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
    else:
        os.environ["GRADIO_TEMP_DIR"] = temp_dir


@pytest.fixture(scope="module")
def server(app_server):
    """The same page, for the tests that drive it in Chromium."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt install chromium, or set SUBJECTGEN_CHROMIUM)")
    pytest.importorskip("playwright.sync_api")
    return app_server


@pytest.fixture
def browser_page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900}, accept_downloads=True)
        page.goto(server[0])
        page.wait_for_selector("#prepare")
        yield page
        browser.close()


def wait_text(page, selector: str, text: str, timeout: float = 120_000) -> str:
    page.wait_for_function("([s, t]) => { const e = document.querySelector(s); "
                           "return e && (e.value ?? e.innerText).includes(t); }", arg=[selector, text], timeout=timeout)
    element = page.query_selector(selector)
    return element.input_value() if selector.endswith("textarea") else element.inner_text()


def shoot(page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        path = Path(SCREENSHOTS) / f"ui_{name}.png"
        page.screenshot(path=str(path), full_page=True)
        with Image.open(path) as shot:  # 256 colours: the README's four screenshots stay small
            shot.convert("RGB").quantize(256).save(path, optimize=True)


def set_subject(page, name: str) -> None:
    page.fill("#subject-name textarea", name)


@pytest.mark.slow
def test_photos_to_trained_subject_to_images_to_zip_in_chromium(server, browser_page, tmp_path):
    """A new user's path: upload the sample subject's photos, train 30 steps, generate, download and load the zip."""
    from subjectgen_diffusers import load_subject
    from subjectgen_training.toy.subject_photos import write_subject_photos

    url, workdir = server
    page = browser_page
    began = time.monotonic()
    photos = sorted(write_subject_photos(tmp_path / "sample").glob("*.png"))
    set_subject(page, "ann")
    page.set_input_files("#photos input[type=file]", [str(p) for p in photos])
    page.click("#prepare")
    report = wait_text(page, "#photos-status", "kept")
    assert report.startswith(f"{len(photos)} kept, 0 dropped")
    prepared = json.loads((workdir / "subjects/ann/prepared/prepare.json").read_text())
    assert prepared["kept"] == len(photos)
    shoot(page, "photos")

    page.get_by_role("tab", name="Train").click()
    page.fill("#steps input", "30")
    page.click("#train")
    progress = wait_text(page, "#progress textarea", "done", timeout=240_000)
    assert progress.startswith("done · step 30/30 · 100%")
    page.wait_for_selector("#loss canvas, #loss svg", timeout=10_000)  # the loss curve is drawn
    assert not page.is_visible("#reg-model")
    page.check("#reg input[value=alt]")  # the alternative model's fields appear, prefilled with the toy pair
    page.wait_for_selector("#reg-model", state="visible", timeout=10_000)
    assert page.input_value("#reg-model input") == "builtin:toy-base"
    assert page.input_value("#reg-lora input") == "builtin:toy-alt-lora"
    shoot(page, "train")
    recorded = json.loads((workdir / "subjects/ann/subject/train_config.json").read_text())
    from subjectgen_training.ui.app import toy_preset

    assert (recorded["steps"], recorded["method"], recorded["lr"]) == (30, "cd+cr", toy_preset()["lr"])  # the demo's

    page.get_by_role("tab", name="Generate").click()
    page.fill("#seed input", "7")
    page.click("#generate")
    page.wait_for_selector("#gallery img", timeout=120_000)
    page.wait_for_selector("#base-gallery img", timeout=10_000)
    assert len(page.query_selector_all("#gallery img")) == 2
    manifest = [json.loads(line) for line in (workdir / "subjects/ann/images/0001/subject/manifest.jsonl").read_text().splitlines()]
    assert [e["seed"] for e in manifest] == [7, 8] and all("cartoon face" in e["prompt"] for e in manifest)
    # identity and prompt scores under each image: `subjectgen evaluate`'s toy backends, results.json beside them
    assert "scores: identity by toy, prompt by toy" in wait_text(page, "#generate-status", "scores")
    results = json.loads((workdir / "subjects/ann/images/0001/subject/results.json").read_text())
    assert [r["file"] for r in results["images"]] == [e["file"] for e in manifest]
    assert all(r["identity"] is not None and r["prompt_following"] is not None for r in results["images"])
    first = results["images"][0]
    page.click("#gallery button.thumbnail-item >> nth=0")  # the preview shows the first image's caption
    wait_text(page, "#gallery", f"identity {first['identity']:.2f} · prompt {first['prompt_following']:.2f}",
              timeout=10_000)
    shoot(page, "generate")

    page.get_by_role("tab", name="Subjects").click()
    page.click("#subjects input")
    page.get_by_role("option", name="ann").click()  # the listing knows the new subject; picking it selects it
    assert "Loaded in the generation pipeline: ann (token" in wait_text(page, "#loaded", "ann")  # Generate loaded it
    page.click("#unload")
    wait_text(page, "#loaded", "No subject loaded")
    page.click("#load")
    assert f"ann (token {recorded['token']}" in wait_text(page, "#loaded", "ann")
    page.check("#export-format input[value=diffusers]")
    page.click("#export")
    wait_text(page, "#subjects-status", "ann-diffusers")
    assert (workdir / "downloads/ann-diffusers/learned_embeds.safetensors").is_file()
    assert (workdir / "downloads/ann-diffusers/pytorch_custom_diffusion_weights.safetensors").is_file()
    page.check("#export-format input[value=lora]")
    page.click("#export")
    exported = wait_text(page, "#subjects-status", "ann-lora")
    assert "ann-lora" in exported and (workdir / "downloads/ann-lora/export.json").is_file()
    page.click("#zip")
    wait_text(page, "#subjects-status", "ready")
    with page.expect_download() as download:
        page.click("#download")
    archive = tmp_path / "ann.zip"
    download.value.save_as(archive)
    shoot(page, "subjects")
    seconds = time.monotonic() - began
    print(f"toy flow in the browser: {seconds:.1f} s")

    # The zip holds exactly the subject's files, byte for byte (no photos, checkpoints, logs or lock), and loads.
    import zipfile

    subject_dir = workdir / "subjects/ann/subject"
    with zipfile.ZipFile(archive) as opened:
        assert sorted(opened.namelist()) == [f"ann/{name}" for name in (
            "subject.safetensors", "subject_config.json", "train_config.json", "train_summary.json")]
        assert all(opened.read(f"ann/{name}") == (subject_dir / name).read_bytes()
                   for name in ("subject.safetensors", "subject_config.json", "train_config.json"))
    shutil.unpack_archive(archive, tmp_path / "unzipped")
    from diffusers import StableDiffusionPipeline

    from subjectgen_training.toy.models import model_path

    pipe = StableDiffusionPipeline.from_pretrained(model_path("toy-base"), safety_checker=None)
    token = load_subject(pipe, tmp_path / "unzipped" / "ann")
    assert token == recorded["token"]


@pytest.mark.slow
def test_bad_input_gets_a_message_in_the_page_never_a_stack_trace(server, browser_page, tmp_path):
    import torch

    url, workdir = server
    page = browser_page
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    set_subject(page, "textonly")
    page.set_input_files("#photos input[type=file]", [str(notes)])
    page.click("#prepare")
    message = wait_text(page, "#photos-status", "error")
    assert "notes.txt" in message and "not an image" in message
    photos = workdir / "subjects/textonly/photos"
    assert not photos.exists() or not any(photos.iterdir())

    page.get_by_role("tab", name="Train").click()
    page.click("#train")
    assert "has no prepared photos" in wait_text(page, "#train-status", "error", timeout=30_000)

    if not torch.cuda.is_available():  # a training that fails once it runs: 8-bit Adam needs a CUDA GPU
        set_subject(page, "eightbit")
        page.get_by_role("tab", name="Photos").click()
        page.click("#sample")
        wait_text(page, "#photos-status", "kept")
        page.get_by_role("tab", name="Train").click()
        page.get_by_text("All training options").click()
        page.check("#use_8bit_adam input")
        page.click("#train")
        failed = wait_text(page, "#progress textarea", "failed")
        assert "error: --use-8bit-adam needs a CUDA GPU" in failed
    assert "Traceback" not in page.content()


def http_get(url: str, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (http.client sends it unnormalised: no client resolves ``..`` first)."""
    import http.client
    from urllib.parse import urlsplit

    connection = http.client.HTTPConnection(urlsplit(url).netloc, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_the_app_serves_files_of_the_workdir_only(app_server, tmp_path):
    """The security claim, over plain HTTP on every machine: Gradio's file route serves the work folder (and the
    uploads cached in it) and nothing else, whatever the path is dressed as."""
    from urllib.parse import quote

    url, workdir = app_server
    root = workdir.resolve()
    secret = b"outside the work folder"
    outside = tmp_path / "outside" / "secret.txt"
    outside.parent.mkdir()
    outside.write_bytes(secret)
    inside = root / "subjects" / "probe" / "probe.txt"
    inside.parent.mkdir(parents=True, exist_ok=True)
    inside.write_bytes(b"inside")
    upload = root / ".uploads" / "0123abcd" / "photo.txt"  # where Gradio caches this page's uploads
    upload.parent.mkdir(parents=True, exist_ok=True)
    upload.write_bytes(b"an upload of this page")
    assert http_get(url, f"/gradio_api/file={inside}") == (200, b"inside")  # the route works: a refusal means something
    assert http_get(url, f"/gradio_api/file={upload}") == (200, b"an upload of this page")

    # another app's or user's upload: Gradio's default cache and another work folder's cache, outside this one
    other_upload = tmp_path / "other-workdir" / ".uploads" / "0123abcd" / "photo.txt"
    other_upload.parent.mkdir(parents=True)
    other_upload.write_bytes(secret)
    # symlinks inside the work folder that lead out of it: to a file, and to a folder
    (root / "subjects" / "probe" / "link.txt").symlink_to(outside)
    (root / "subjects" / "probe" / "linkdir").symlink_to(outside.parent, target_is_directory=True)
    up = "/".join([".."] * len(inside.parent.relative_to(root).parts)) + "/.."  # from probe/ to the workdir's parent
    relative_out = os.path.relpath(outside, inside.parent)
    attempts = {
        "absolute path": str(outside),
        "this test file": str(Path(__file__).resolve()),
        "/etc/passwd": "/etc/passwd",
        "dot-dot": f"{inside.parent}/{relative_out}",
        "dot-dot to the parent": f"{inside.parent}/{up}/{outside.parent.name}/secret.txt",
        "encoded dot-dot": f"{inside.parent}/{relative_out}".replace("..", "%2e%2e"),
        "encoded slashes": quote(f"{inside.parent}/{relative_out}", safe=""),
        "symlink to a file": str(root / "subjects" / "probe" / "link.txt"),
        "symlink to a folder": str(root / "subjects" / "probe" / "linkdir" / "secret.txt"),
        "another upload": str(other_upload),
        "the work folder's name as a prefix": f"{root}-evil/secret.txt",
    }
    (Path(f"{root}-evil")).mkdir(exist_ok=True)
    (Path(f"{root}-evil") / "secret.txt").write_bytes(secret)
    served = {}
    for what, path in attempts.items():
        for route in (f"/gradio_api/file={path}", f"/file={path}"):
            status, body = http_get(url, route)
            if secret in body or (route.startswith("/gradio_api/") and status == 200):
                served[f"{what} ({route})"] = status
    assert served == {}, served


@pytest.mark.slow
def test_stop_midway_then_resume_to_the_end(server, browser_page, monkeypatch, tmp_path):
    """Stop lands at a known step on any machine: the run is held right after its first checkpoint (the probe the
    CLI resume test uses, installed in this process, where the app's training thread runs) while the page is closed,
    reopened and Stop is pressed; released, it ends at that checkpoint's step."""
    from _cli import install_probes

    url, workdir = server
    page = browser_page
    set_subject(page, "bob")
    page.click("#sample")
    wait_text(page, "#photos-status", "kept")
    page.get_by_role("tab", name="Train").click()
    page.fill("#steps input", "1")
    page.check("#method input[value=cd]")  # refills the fields from cd's recipe (toy preset: 300 steps) ...
    page.wait_for_function("document.querySelector('#steps input').value === '300'")
    page.fill("#steps input", "20")  # ... then 20 steps, checkpointed every 2 (a tenth)
    checkpoints, release = workdir / "subjects/bob/subject.checkpoints", tmp_path / "release"
    install_probes({"pause_when": {"dir": str(checkpoints), "name_startswith": "step-", "count": 1,
                                   "release_when": str(release)}}, setattr=monkeypatch.setattr)
    page.click("#train")
    deadline = time.monotonic() + 600  # a guard only: the run is held there, however slow the machine
    while not (checkpoints / "step-0000002").is_dir():  # held there until the release file exists
        assert time.monotonic() < deadline, "the first checkpoint was not written"
        time.sleep(0.1)
    # Closing the browser tab does not stop the training; a new tab shows it running.
    browser = page.context.browser
    page.close()
    page = browser.new_page()
    page.goto(url)
    assert wait_text(page, "#subject-name textarea", "bob", timeout=30_000) == "bob"
    page.get_by_role("tab", name="Train").click()
    wait_text(page, "#progress textarea", "running · step", timeout=30_000)
    page.click("#stop")
    wait_text(page, "#progress textarea", "stopping", timeout=30_000)
    release.touch()
    stopped = wait_text(page, "#progress textarea", "stopped", timeout=120_000)
    step = int(stopped.split("step ")[1].split("/")[0])
    assert step == 2, stopped  # the checkpoint it was held at, whatever the machine's speed
    assert not (workdir / "subjects/bob/subject/subject_config.json").exists()
    assert (workdir / f"subjects/bob/subject.checkpoints/step-{step:07d}").is_dir()  # beside the subject, as the CLI
    # after a server restart the page rebuilds the run from train_config.json and the work folder's layout
    from subjectgen_training.ui.app import App, UISettings

    restarted = App(UISettings(workdir=str(workdir)))
    rebuilt = restarted._recorded_config(restarted.workdir.subject("bob"))
    assert (rebuilt.steps, rebuilt.method, rebuilt.checkpoint_every) == (20, "cd", 2)
    assert Path(rebuilt.out) == workdir.resolve() / "subjects/bob/subject" and Path(rebuilt.photos).is_dir()
    page.click("#resume")
    assert f"resuming from `step-{step:07d}`".replace("`", "") in wait_text(page, "#train-status", "resum",
                                                                             timeout=30_000)
    done = wait_text(page, "#progress textarea", "done", timeout=600_000)
    assert done.startswith("done · step 20/20 · 100%")
    summary = json.loads((workdir / "subjects/bob/subject/train_summary.json").read_text())
    assert summary["resumed_from"] == step and summary["steps"] == 20
    recorded = json.loads((workdir / "subjects/bob/subject/train_config.json").read_text())
    assert recorded["method"] == "cd"
    # the resumed subject is a whole one: it loads into the base pipeline
    from diffusers import StableDiffusionPipeline

    from subjectgen_diffusers import load_subject
    from subjectgen_training.toy.models import model_path

    pipe = StableDiffusionPipeline.from_pretrained(model_path("toy-base"), safety_checker=None)
    assert load_subject(pipe, workdir / "subjects/bob/subject") == recorded["token"]


def outside_address() -> str | None:
    """This machine's address on its default route (no packet is sent), or None when it has only loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: routing only
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.mark.slow
def test_subjectgen_ui_starts_on_localhost_and_serves_the_page(tmp_path):
    """The real command in a subprocess: listens on 127.0.0.1 only (the default), answers with the page."""
    import subprocess
    import urllib.request

    from _cli import cli_command, cli_env

    pytest.importorskip("gradio")
    port = free_port()
    env = cli_env({"GRADIO_ANALYTICS_ENABLED": "False"}, None)
    process = subprocess.Popen(cli_command(["--threads", "1", "ui", "--workdir", str(tmp_path / "work"), "--port", str(port)], None),
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    assert response.status == 200 and "subjectgen" in response.read().decode()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "subjectgen ui did not start"
                time.sleep(0.5)
        other = outside_address()
        if other is not None:  # another address of this machine: nothing listens there
            with pytest.raises(OSError):
                socket.create_connection((other, port), timeout=2).close()
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=30)
    assert f"subjectgen ui: http://127.0.0.1:{port}" in out
    assert (tmp_path / "work").is_dir()


# -- the page's actions without the browser: regularisation models, the kept generation pipeline, exports -----------
def wait_for_job(app, name: str, timeout: float = 600.0):
    deadline = time.monotonic() + timeout
    while True:
        job = app.queue.snapshot(name)
        if job is not None and not job.active:
            return job
        assert time.monotonic() < deadline, f"{name}: training still {job.state if job else 'missing'}"
        time.sleep(0.5)


@pytest.mark.slow
def test_regularisation_from_an_alternative_model_with_a_lora_and_the_kept_generation_pipeline(tmp_path):
    """Train tab: 'from an alternative model with a LoRA' draws the class images with that model and LoRA;
    Generate's base images (the subject unloaded from the kept pipeline) equal `subjectgen generate`'s without a
    subject; Subjects: load/unload and the diffusers export that stock diffusers reads."""
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    from subjectgen_training.experiment.demos import TOY_PROMPTS
    from subjectgen_training.sampling.generate import GenerateConfig, generate_images
    from subjectgen_training.toy.models import model_path
    from subjectgen_training.ui.app import App, UISettings, shown, toy_generation
    from subjectgen_training.ui.workdir import WorkdirError

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    app = App(UISettings(workdir=str(tmp_path / "work")))
    values = {name: [shown(f, "2" if f.name == "steps" else app.initial(f, "cd")) for f in app.fields]
              for name in ("alt", "plain")}
    for name in values:
        app.use_sample(name)
    with pytest.raises(WorkdirError, match="give the model"):
        app.start("alt", "cd", "alt", " ", "builtin:toy-alt-lora", *values["alt"])
    said = app.start("alt", "cd", "alt", "builtin:toy-base", "builtin:toy-alt-lora", *values["alt"])
    assert "regularisation images from `builtin:toy-base` + LoRA `builtin:toy-alt-lora`" in said
    assert wait_for_job(app, "alt").state == "done", app.queue.snapshot("alt").message
    app.start("plain", "cd", "base", "", "", *values["plain"])
    assert wait_for_job(app, "plain").state == "done", app.queue.snapshot("plain").message

    alt_dir = app.workdir.regularization("builtin:toy-base", "builtin:toy-alt-lora")
    base_dir = app.workdir.regularization(app.settings.base)
    assert alt_dir != base_dir
    alt_settings = json.loads((alt_dir / "regularize.json").read_text())
    assert alt_settings["lora"] == model_path("toy-alt-lora") and alt_settings["model"] == model_path("toy-base")
    assert json.loads((base_dir / "regularize.json").read_text())["lora"] is None
    recorded = json.loads((tmp_path / "work/subjects/alt/subject/train_config.json").read_text())
    assert recorded["reg_dir"].endswith(alt_dir.name)  # trained with prior preservation on the LoRA's images
    pairs = [(np.asarray(Image.open(a), dtype=float), np.asarray(Image.open(base_dir / a.name), dtype=float))
             for a in sorted(alt_dir.glob("*.png"))]
    assert len(pairs) == 16 and np.mean([np.abs(a - b).mean() for a, b in pairs]) > 0  # same seeds, the LoRA drew them
    # each set is drawn once and reused: a second subject trained on the base model's set gets the same folder, and
    # not one image of it is drawn again
    drawn = {p.name: p.stat().st_mtime_ns for p in base_dir.glob("*.png")}
    app.use_sample("again")
    app.start("again", "cd", "base", "", "", *values["plain"])
    assert wait_for_job(app, "again").state == "done", app.queue.snapshot("again").message
    assert {p.name: p.stat().st_mtime_ns for p in base_dir.glob("*.png")} == drawn and len(drawn) == 16
    again = json.loads((tmp_path / "work/subjects/again/subject/train_config.json").read_text())
    assert again["reg_dir"] == json.loads((tmp_path / "work/subjects/plain/subject/train_config.json").read_text())["reg_dir"]
    assert sorted(p.name for p in (tmp_path / "work/regularization").iterdir()) == sorted([alt_dir.name, base_dir.name])

    status, subject_images, base_images = app.generate("alt", TOY_PROMPTS[0], 1.0, 3, 1)
    assert app.generation.loaded.name == "alt" and "alt" in app.loaded_text()
    fresh = generate_images(GenerateConfig(base=app.base, prompts=TOY_PROMPTS[0].replace("{}", "a cartoon face"),
                                           out=str(tmp_path / "fresh"), num_per_prompt=1, seed=3, **toy_generation()))
    base_pixels = np.asarray(Image.open(base_images[0][0]))
    assert np.array_equal(base_pixels, np.asarray(Image.open(next(fresh.glob("*.png")))))  # unloaded = the base exactly
    assert not np.array_equal(base_pixels, np.asarray(Image.open(subject_images[0][0])))
    assert "identity" in subject_images[0][1] and "prompt" in subject_images[0][1]  # the caption's scores

    assert app.unload()[1].startswith("No subject loaded") and app.generation.loaded is None
    assert "**alt**" in app.load("alt")[1]
    message, files = app.export("alt", "diffusers")
    names = sorted(Path(f).name for f in files)
    assert names == ["learned_embeds.safetensors", "pytorch_custom_diffusion_weights.safetensors"], message
    pipe = StableDiffusionPipeline.from_pretrained(model_path("toy-base"), safety_checker=None)
    pipe.load_textual_inversion(str(tmp_path / "work/downloads/alt-diffusers/learned_embeds.safetensors"))
    assert recorded["token"] in pipe.tokenizer.get_vocab()
    torch.set_num_threads(threads)
