"""`prepare` on real photos shipped in packages: crops around the face, masks, drop reasons, EXIF, the face extra."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _cli import REPO_ROOT, run_cli
from subjectgen_training.data.faces import FaceAnalyzer, FaceBox
from subjectgen_training.data.photos import load_photo_folder
from subjectgen_training.data.prepare import PrepareConfig, PrepareError, prepare_photos, square_crop

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
# The fixture's truth, marked by eye on the two photos: one person each, face centre (x, y) between the eyes and the
# mouth. scikit-image's astronaut is 512 x 512, matplotlib's Grace Hopper 512 x 600.
FACE_CENTRES = {"astronaut.jpg": (225, 115), "hopper.png": (258, 245)}
# Marked by eye too: what is not a face but looks enough like one for dlib's HOG detector at upsample 1 (the round
# STS-93 mission patch on the astronaut's left chest, centre about (170, 395)). Grace Hopper's photo has none.
LOOKALIKE_CENTRES = {"astronaut.jpg": [(170, 395)], "hopper.png": []}


@pytest.fixture(scope="module")
def analyzer():
    return FaceAnalyzer()


@pytest.fixture
def photo_folder(tmp_path, astronaut_image, grace_hopper_image) -> Path:
    """Two people, a cat (no human face) and a JPEG cut short."""
    from skimage import data

    folder = tmp_path / "photos"
    folder.mkdir()
    astronaut_image.save(folder / "astronaut.jpg", quality=95)
    grace_hopper_image.save(folder / "hopper.png")
    Image.fromarray(data.chelsea()).save(folder / "cat.jpg", quality=95)
    whole = (folder / "astronaut.jpg").read_bytes()
    (folder / "corrupt.jpg").write_bytes(whole[: len(whole) // 3])
    return folder


def inside(box: dict, rect: list[int]) -> bool:
    return rect[0] <= box["left"] and rect[1] <= box["top"] and box["right"] <= rect[2] and box["bottom"] <= rect[3]


def test_cli_keeps_two_people_and_drops_the_cat_and_the_corrupt_file(photo_folder, tmp_path, analyzer):
    out = tmp_path / "prepared"
    result = run_cli("prepare", str(photo_folder), str(out), "--resolution", "256", "--margin", "0.8",
                     timeout=300, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    assert "cat.jpg" in result.stdout and "dropped: no face" in result.stdout
    assert "dropped: unreadable file" in result.stdout and "2 kept, 2 dropped" in result.stdout

    report = json.loads((out / "prepare.json").read_text())
    assert (report["kept"], report["dropped"], report["resolution"], report["margin"]) == (2, 2, 256, 0.8)
    by_file = {entry["file"]: entry for entry in report["photos"]}
    assert by_file["cat.jpg"]["status"] == "dropped" and by_file["cat.jpg"]["reason"] == "no_face"
    assert by_file["corrupt.jpg"]["status"] == "dropped" and by_file["corrupt.jpg"]["reason"] == "unreadable"
    assert sorted(p.name for p in out.iterdir()) == [
        "astronaut.mask.png", "astronaut.png", "hopper.mask.png", "hopper.png", "prepare.json"]

    for name in ("astronaut.jpg", "hopper.png"):
        entry = by_file[name]
        assert entry["status"] == "kept" and entry["faces_found"] >= 1
        crop = entry["crop"]
        assert crop[2] - crop[0] == crop[3] - crop[1]  # square
        assert inside(entry["face"], crop)
        image = Image.open(out / entry["output"])
        mask = Image.open(out / entry["mask"])
        assert image.mode == "RGB" and image.size == (256, 256)
        assert mask.mode == "L" and mask.size == (256, 256) and set(np.unique(np.asarray(mask))) == {0, 255}
        # The crop still shows the face, near its centre, and the mask covers it.
        faces = analyzer.detect(image)
        assert faces, f"no face in the crop of {name}"
        cx, cy = faces[0].center
        assert abs(cx - 128) < 40 and abs(cy - 128) < 40
        face_area = np.asarray(mask)[faces[0].top:faces[0].bottom, faces[0].left:faces[0].right]
        assert (face_area == 255).mean() > 0.6
        assert 0.05 < (np.asarray(mask) == 255).mean() < 0.5  # the face, not the whole crop
    # Against the hand-marked truth only (never the detector's own output): faces_found counts every detection, so
    # it is at least the one marked face and at most that face plus the marked look-alikes; the kept face covers the
    # marked face centre.
    for name, (x, y) in FACE_CENTRES.items():
        entry = by_file[name]
        assert 1 <= entry["faces_found"] <= 1 + len(LOOKALIKE_CENTRES[name]), (name, entry)
        face = entry["face"]
        assert face["left"] <= x <= face["right"] and face["top"] <= y <= face["bottom"], (name, face)
        assert not any(face["left"] <= lx <= face["right"] and face["top"] <= ly <= face["bottom"]
                       for lx, ly in LOOKALIKE_CENTRES[name]), (name, face)

    # Trainers read the prepared folder with its masks.
    photos = load_photo_folder(out)
    assert [p.path.name for p in photos] == ["astronaut.png", "hopper.png"]
    assert all(p.mask is not None and p.mask.size == p.image.size for p in photos)


def test_several_similar_faces_and_small_faces_are_dropped(tmp_path, astronaut_image, analyzer):
    folder = tmp_path / "photos"
    folder.mkdir()
    pair = Image.new("RGB", (1024, 512))
    pair.paste(astronaut_image, (0, 0))
    pair.paste(astronaut_image.transpose(Image.FLIP_LEFT_RIGHT), (512, 0))
    pair.save(folder / "pair.png")
    astronaut_image.resize((300, 300), Image.LANCZOS).save(folder / "far.png")  # her face is ~53 px wide
    (folder / "notes.txt").write_text("not a photo")  # captions and notes are not photos
    report = prepare_photos(PrepareConfig(photos=folder, out=tmp_path / "out", resolution=128), analyzer)
    by_file = {entry["file"]: entry for entry in report["photos"]}
    assert set(by_file) == {"pair.png", "far.png"}
    assert by_file["pair.png"]["reason"] == "several_faces" and "2 faces" in by_file["pair.png"]["detail"]
    assert by_file["far.png"]["reason"] == "face_too_small" and "--min-face is 64" in by_file["far.png"]["detail"]
    # A lower --min-face keeps the far photo.
    report = prepare_photos(PrepareConfig(photos=folder, out=tmp_path / "out", resolution=128, min_face=40), analyzer)
    assert {e["file"]: e["status"] for e in report["photos"]} == {"pair.png": "dropped", "far.png": "kept"}


def test_exif_rotation_is_applied_before_detection(tmp_path, astronaut_image, analyzer):
    folder = tmp_path / "photos"
    folder.mkdir()
    sideways = astronaut_image.rotate(90, expand=True)  # as the camera stored it
    assert analyzer.detect(sideways) == [] or analyzer.detect(sideways)[0].score < 0.5
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    sideways.save(folder / "phone.jpg", exif=exif, quality=95)
    astronaut_image.save(folder / "upright.jpg", quality=95)
    report = prepare_photos(PrepareConfig(photos=folder, out=tmp_path / "out", resolution=128), analyzer)
    phone, upright = report["photos"]
    assert phone["status"] == upright["status"] == "kept"
    assert phone["crop"] == upright["crop"]
    a = np.asarray(Image.open(tmp_path / "out" / "phone.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "out" / "upright.png")).astype(int)
    assert np.abs(a - b).mean() < 3  # the same upright crop (JPEG noise aside)


def test_rerun_replaces_previous_outputs_and_keeps_captions(tmp_path, astronaut_image, grace_hopper_image, analyzer):
    folder, out = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    astronaut_image.save(folder / "a.png")
    grace_hopper_image.save(folder / "b.png")
    (folder / "a.txt").write_text("a photo of {} in a spacesuit")
    prepare_photos(PrepareConfig(photos=folder, out=out, resolution=64, margin=0.5), analyzer)
    assert (out / "a.txt").read_text() == "a photo of {} in a spacesuit"
    assert (out / "b.png").is_file()
    (folder / "b.png").unlink()
    report = prepare_photos(PrepareConfig(photos=folder, out=out, resolution=64, margin=0.5), analyzer)
    assert report["kept"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.mask.png", "a.png", "a.txt", "prepare.json"]


def test_square_crop_stays_inside_the_photo_and_holds_the_face():
    face = FaceBox(10, 300, 60, 350, 1.0)  # near the bottom-left corner of a 400 x 360 photo
    left, top, right, bottom = square_crop(face, 400, 360, margin=1.0)
    assert right - left == bottom - top == 150
    assert 0 <= left and 0 <= top and right <= 400 and bottom <= 360
    assert left <= face.left and top <= face.top and face.right <= right and face.bottom <= bottom
    assert square_crop(face, 400, 360, margin=10.0) == (0, 0, 360, 360)  # at most the shorter side


def test_config_errors_say_what_to_change(tmp_path):
    with pytest.raises(PrepareError, match=r"allowed keys are \['photos', 'out', 'resolution', 'margin'"):
        PrepareConfig.from_dict({"photos": tmp_path, "out": tmp_path / "o", "resolutoin": 512})
    with pytest.raises(PrepareError, match="--margin must be >= 0"):
        PrepareConfig(photos=tmp_path, out=tmp_path / "o", margin=-1)
    with pytest.raises(PrepareError, match="OUT must differ from PHOTOS"):
        (tmp_path / "x.png").write_bytes(b"")
        prepare_photos(PrepareConfig(photos=tmp_path, out=tmp_path))


def test_without_the_face_extra_the_cli_says_what_to_install(photo_folder, tmp_path):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "dlib.py").write_text("raise ImportError('No module named dlib')\n")  # as if dlib-bin were absent
    result = run_cli("prepare", str(photo_folder), str(tmp_path / "out"), timeout=120,
                     env={"PYTHONPATH": f"{shadow}:{REPO_ROOT}", **ONE_THREAD})
    assert result.returncode == 2
    assert 'error: face detection needs dlib, which is not installed: pip install "subjectgen-diffusers[face]"' \
        in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_exits_2_when_no_photo_is_kept(tmp_path, capsys):
    from skimage import data

    from subjectgen_training.cli import main

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(data.chelsea()).save(folder / "cat.png")
    assert main(["prepare", str(folder), str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert "cat.png  dropped: no face" in captured.out
    assert "error: no photo in" in captured.err and "add usable photos" in captured.err
    assert json.loads((tmp_path / "out" / "prepare.json").read_text())["dropped"] == 1
