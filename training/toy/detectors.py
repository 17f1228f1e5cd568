"""Deterministic pixel-rule detectors for the toy world: what is in a (generated) cartoon-face image.

No learned model: each attribute is read by nearest-palette classification of the pixels in a window placed relative
to the head, which is located by matching the lower half of the head ellipse against the skin-coloured pixels (so
hair, hats and glasses do not disturb it). Used as

- *likeness* (toy identity): how many of the subject's fixed attributes are present -- half the score is the hidden,
  never-captioned mark (its colour *and* place), half is skin, hair colour and hair style. Eye colour is read too, but
  2-pixel irises are not read reliably enough (nor kept by the toy VAE) to count towards likeness;
- *prompt-following*: the background colour and the accessory (hat / glasses) that a prompt asks for.

Both are honest on this world only; ``tests/test_toy_world.py`` checks them on rendered ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from . import world
from .world import SIZE

MAX_COLOUR_DISTANCE = 80.0
MARK_COLOUR_DISTANCE = 70.0
LOWER_FROM = 2.2  # below the glasses: cheeks, mouth and chin
SHIFTS = np.arange(-2.5, 2.51, 0.5)
# Generated images drift from the palette (issue 14's robustness table, training/toy/detector_check.py): glasses are
# drawn as a grey-black ring a pixel off the rendered one, and long hair often stops at the cheeks.
GLASSES_DARK = 110.0  # a ring pixel is dark when its brightest channel is below this (was 70: missed grey rings)
GLASSES_FRACTION = 0.3  # share of the ring that must be dark
GLASSES_SHIFTS = (-1.0, -0.5, 0.0, 0.5, 1.0)  # eye-centre offsets (pixels, both axes) tried; the darkest ring counts
REFIT_WITH_FACE_SKIN = True
SURFACE_DISTANCE = 60.0  # how near a world colour a pixel must be to count for the head's surface
# Issue 28: the model draws a face's skin in its own shade, not the palette's (dark skin beside light hair on yellow or
# purple comes out darker, ~(105, 60, 40), nearer the brown hair and eye colours than dark skin), so a surface read
# against the world palette loses half the face and the head is missed. The head is therefore also fitted against
# the face's *measured* tone (the median of its cheeks under a first fit); the better-matching fit is kept.
FIT_MEASURED_TONE = True
# The measured tone is the densest colour of the cheek window (the median of the window's pixels within this distance
# of the pixel that has the most such neighbours), not the window's per-channel median: a mark, an eye's lower rim or
# a mouth inside the window pulls a median off the face's shade (a near-white face came out grey, (219, 222, 215),
# and lost to the world's white hair). Half the surface distance: the tone's cluster lies inside the surface it
# decides. DENSEST_TONE = False gives issue 28's first rule (the median).
DENSEST_TONE = True
TONE_RADIUS = SURFACE_DISTANCE / 2
MEASURED_SIDES = True
# Faint marks (issue 28's held-out part): the model often draws the unnamed mark as a pale smear, the face's tone
# blended part-way towards the mark colour, no pixel of it within MARK_COLOUR_DISTANCE of the colour. When the strict
# rule finds none, each (colour, place) is scored by how far its patch's two most mark-like pixels lie along the line
# from the face's measured tone to that colour (pixels off that line by more than FAINT_MARK_OFF_LINE do not count);
# a score of at least FAINT_MARK_FRACTION reads as that mark. The fraction is the middle of the gap the development
# part of the labelled set shows between images without a mark (largest score 0.21) and missed marks (smallest 0.27).
FAINT_MARKS = True
FAINT_MARK_FRACTION = 0.24
FAINT_MARK_OFF_LINE = 40.0
LONG_HAIR_FRACTION = 0.3  # share of the band beside the cheeks that must be hair
LONG_HAIR_BAND = (0.0, 6.0)  # rows of that band, relative to the head centre


@dataclass(frozen=True)
class FaceReading:
    """What the detectors read from one image (``None`` where the rule found nothing it trusts)."""

    background: str | None
    skin: str | None
    hair_colour: str | None
    hair_style: str | None
    eye_colour: str | None
    accessory: str
    mark: tuple[str, str] | None
    head_found: bool


def to_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """``[SIZE, SIZE, 3]`` float array; other sizes are box-resized to the world's size."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8))
    image = image.convert("RGB")
    if image.size != (SIZE, SIZE):
        image = image.resize((SIZE, SIZE), Image.BOX)
    return np.asarray(image, dtype=np.float32)


def nearest(pixels: np.ndarray, palette: dict[str, tuple[int, int, int]], max_distance: float = MAX_COLOUR_DISTANCE):
    """Per pixel, the index of the nearest palette colour, or -1 when none is within ``max_distance``."""
    colours = np.asarray(list(palette.values()), dtype=np.float32)
    distance = np.linalg.norm(pixels[..., None, :] - colours, axis=-1)
    index = distance.argmin(-1)
    index[distance.min(-1) > max_distance] = -1
    return index


def majority(labels: np.ndarray, names: list[str], min_fraction: float = 0.4) -> str | None:
    labels = labels[labels >= 0]
    if labels.size == 0:
        return None
    counts = np.bincount(labels, minlength=len(names))
    best = int(counts.argmax())
    return names[best] if counts[best] >= min_fraction * labels.size else None


_GRID = (np.arange(SIZE) + 0.5)
_Y, _X = np.meshgrid(_GRID, _GRID, indexing="ij")


@lru_cache(maxsize=1)
def _head_templates() -> list[tuple[str, float, float, np.ndarray]]:
    templates = []
    for shape, (rx, ry) in world.HEAD_SHAPES.items():
        for dx in SHIFTS:
            for dy in SHIFTS:
                cx, cy = world.CENTRE[0] + dx, world.CENTRE[1] + dy
                inside = ((_X - cx) / rx) ** 2 + ((_Y - cy) / ry) ** 2 <= 1.0
                templates.append((shape, cx, cy, inside & (_Y >= cy + LOWER_FROM)))
    return templates


def locate_head(skin_mask: np.ndarray) -> tuple[str, float, float, float]:
    """Best ``(shape, cx, cy, IoU)`` of a lower-half head ellipse against the skin mask."""
    best = ("round", *world.CENTRE, 0.0)
    for shape, cx, cy, template in _head_templates():
        lower_skin = skin_mask & (_Y >= cy + LOWER_FROM)
        union = (lower_skin | template).sum()
        iou = float((lower_skin & template).sum() / union) if union else 0.0
        if iou > best[3]:
            best = (shape, cx, cy, iou)
    return best


@lru_cache(maxsize=1)
def _full_palette() -> tuple[dict[str, tuple[int, int, int]], int]:
    """Every colour the world paints; the skins come first."""
    palette = {f"skin:{k}": v for k, v in world.SKINS.items()}
    for group in (world.BACKGROUNDS, world.HAIR_COLOURS, world.EYE_COLOURS, world.MARK_COLOURS):
        palette.update({f"{id(group)}:{k}": v for k, v in group.items()})
    palette.update(hat=world.HAT_COLOUR, glasses=world.GLASSES_COLOUR, white=world.EYE_WHITE, mouth=world.MOUTH_COLOUR)
    return palette, len(world.SKINS)


def skin_mask(pixels: np.ndarray, only_skin: str | None = None, tone: np.ndarray | None = None) -> np.ndarray:
    """Pixels of the face's surface: nearest world colour is a skin tone (``only_skin``'s, when given), a mark or the
    mouth (and close to it). With ``tone`` (a measured RGB colour), the world's skin tones are replaced by that one
    colour: the face's own shade competes with the hair, eye, background and other colours for each pixel."""
    palette, num_skins = _full_palette()
    colours = dict(palette)
    if tone is not None:
        colours = {"skin:measured": tuple(float(v) for v in tone), **{k: v for k, v in palette.items() if not k.startswith("skin:")}}
        num_skins = 1
    labels = nearest(pixels, colours, SURFACE_DISTANCE)
    names = list(colours)
    surface = [i for i, name in enumerate(names)
               if (i < num_skins and (only_skin is None or name == f"skin:{only_skin}")) or name == "mouth"]
    surface += [names.index(f"{id(world.MARK_COLOURS)}:{k}") for k in world.MARK_COLOURS]
    return np.isin(labels, surface)


# Where every head of the world has its cheeks and mouth, whatever its pose (JITTER) and shape: below the glasses
# of the highest head, inside the chin and cheeks of the smallest; the face's own tone is measured here.
FACE_CORE = (np.abs(_X - world.CENTRE[0]) <= 4.0) & (_Y >= world.CENTRE[1] + 2.5) & (_Y <= world.CENTRE[1] + 6.5)


def face_tone(core: np.ndarray) -> np.ndarray:
    """The face's own shade from the cheek window's pixels ``[N, 3]``: the densest colour (``DENSEST_TONE``; see
    ``TONE_RADIUS``), or the per-channel median."""
    core = core.astype(np.float64)
    if not DENSEST_TONE:
        return np.median(core, axis=0)
    near = np.linalg.norm(core[:, None, :] - core[None, :, :], axis=-1) < TONE_RADIUS
    return np.median(core[near[near.sum(1).argmax()]], axis=0)


def fit_head(pixels: np.ndarray, tone: np.ndarray | None = None) -> tuple[tuple[str, float, float, float], bool]:
    """``(locate_head's fit, whether the measured tone won)``: the head fitted on the surface read against the world
    palette and, with ``FIT_MEASURED_TONE``, again with the world's skin tones replaced by the face's own measured
    tone (:func:`face_tone` of ``FACE_CORE``, used when a world skin tone is within ``MAX_COLOUR_DISTANCE`` of it); the fit
    that matches its ellipse better wins."""
    palette_fit = locate_head(skin_mask(pixels))
    if not FIT_MEASURED_TONE:
        return palette_fit, False
    tone = face_tone(pixels[FACE_CORE]) if tone is None else tone
    if nearest(tone[None], world.SKINS)[0] < 0:
        return palette_fit, False
    measured_fit = locate_head(skin_mask(pixels, tone=tone))
    return (measured_fit, True) if measured_fit[3] > palette_fit[3] else (palette_fit, False)


def faint_mark(pixels: np.ndarray, cx: float, cy: float, tone: np.ndarray) -> tuple[str, str] | None:
    """The (colour, place) whose 3x3 patch at the located head lies furthest from the face's tone towards that mark
    colour (see ``FAINT_MARK_FRACTION``; ``tone``: the face's, :func:`face_tone`), or None when none reaches the
    fraction."""
    best, found = FAINT_MARK_FRACTION, None
    for colour, rgb in world.MARK_COLOURS.items():
        towards = np.asarray(rgb, np.float64) - tone
        for place, (dx, dy) in world.MARK_PLACES.items():
            patch = (np.abs(_X - (cx + dx)) <= 1.5) & (np.abs(_Y - (cy + dy)) <= 1.5)
            offsets = pixels[patch].astype(np.float64) - tone
            along = offsets @ towards / (towards @ towards)
            off_line = np.linalg.norm(offsets - np.outer(along, towards), axis=1)
            score = float(np.sort(np.where(off_line < FAINT_MARK_OFF_LINE, along, 0.0))[-2:].mean())
            if score >= best:
                best, found = score, (colour, place)
    return found


def read_face(image: Image.Image | np.ndarray) -> FaceReading:
    """Apply every rule to one image."""
    pixels = to_array(image)
    background_names = list(world.BACKGROUNDS)
    border = np.zeros((SIZE, SIZE), bool)
    border[:, :3] = border[:, -3:] = True
    border[-2:, :] = True
    background = majority(nearest(pixels[border], world.BACKGROUNDS), background_names, 0.5)

    skin_names = list(world.SKINS)
    skin_labels = nearest(pixels, world.SKINS, 60.0)
    tone = face_tone(pixels[FACE_CORE])  # the face's own shade: the head fit and the faint-mark step read it
    (shape, cx, cy, iou), measured_tone = fit_head(pixels, tone)
    head_found = iou >= 0.5
    rx, ry = world.HEAD_SHAPES[shape]
    inside = ((_X - cx) / rx) ** 2 + ((_Y - cy) / ry) ** 2 <= 1.0
    cheeks = inside & (_Y >= cy + LOWER_FROM)  # below the glasses: blurred dark rims pull the skin towards dark
    skin = majority(skin_labels[cheeks], skin_names, 0.5) if head_found else None
    if skin is not None and REFIT_WITH_FACE_SKIN and not measured_tone:
        # Where hair meets the background, their blend can be nearest to *a* skin tone (brown on red reads as dark
        # skin) and drags the fit down; refit on the face's own tone only (a fit on the measured tone already is).
        shape, cx, cy, refit_iou = locate_head(skin_mask(pixels, only_skin=skin))
        rx, ry = world.HEAD_SHAPES[shape]
        inside = ((_X - cx) / rx) ** 2 + ((_Y - cy) / ry) ** 2 <= 1.0

    hair_palette = {**world.HAIR_COLOURS, **{f"skin:{k}": v for k, v in world.SKINS.items()}}
    fringe = inside & (_Y >= cy - 8.0) & (_Y <= cy - 5.5)
    fringe_label = majority(nearest(pixels[fringe], hair_palette), list(hair_palette), 0.5) if head_found else None
    if fringe_label is None:
        hair_colour = hair_style = None
    elif fringe_label.startswith("skin:"):
        hair_colour, hair_style = None, "bald"
    else:
        hair_colour = fringe_label
        sides = ((np.abs(np.abs(_X - cx) - (rx + 1.0)) <= 0.5) & (_Y >= cy + LONG_HAIR_BAND[0])
                 & (_Y <= cy + LONG_HAIR_BAND[1]))
        side_palette = {"hair": world.HAIR_COLOURS[hair_colour]}
        if background is not None:
            side_palette["background"] = world.BACKGROUNDS[background]
        if MEASURED_SIDES:
            # the hair and background as this image draws them (generated blond on yellow drifts to within ~70 of
            # the background's palette colour): the fringe's and the border's medians
            side_palette = {"hair": tuple(np.median(pixels[fringe], axis=0)), "background": tuple(np.median(pixels[border], axis=0))}
        side_hair = nearest(pixels[sides], side_palette) == 0
        hair_style = "long" if side_hair.mean() >= LONG_HAIR_FRACTION else "short"

    eye_colour = None
    if head_found:
        irises = np.zeros((SIZE, SIZE), bool)
        for side in (-1, 1):
            irises |= np.hypot(_X - (cx + side * world.EYE_OFFSET[0]), _Y - (cy + world.EYE_OFFSET[1])) <= 0.8
        eye_colour = majority(nearest(pixels[irises], world.EYE_COLOURS, 90.0), list(world.EYE_COLOURS), 0.5)

    accessory = "none"
    if head_found:
        crown = (np.abs(_X - cx) <= 4.0) & (_Y >= cy - 15.0) & (_Y <= cy - 11.0)
        hat_hits = nearest(pixels[crown], {"hat": world.HAT_COLOUR}, 60.0) >= 0
        darkest = 0.0
        for sx in GLASSES_SHIFTS:
            for sy in GLASSES_SHIFTS:
                ring = np.zeros((SIZE, SIZE), bool)
                for side in (-1, 1):
                    distance = np.hypot(_X - (cx + sx + side * world.EYE_OFFSET[0]), _Y - (cy + sy + world.EYE_OFFSET[1]))
                    ring |= (distance >= 2.0) & (distance <= 2.9)
                darkest = max(darkest, float((pixels[ring].max(-1) < GLASSES_DARK).mean()))
        if hat_hits.mean() >= 0.5:
            accessory = "hat"
        elif darkest >= GLASSES_FRACTION:
            accessory = "glasses"

    mark = None
    mark_labels = nearest(pixels, world.MARK_COLOURS, MARK_COLOUR_DISTANCE)
    if head_found and (mark_labels >= 0).sum() >= 2:
        colour_index = int(np.bincount(mark_labels[mark_labels >= 0]).argmax())
        ys, xs = np.nonzero(mark_labels == colour_index)
        offset = np.array([xs.mean() + 0.5 - cx, ys.mean() + 0.5 - cy])
        places = list(world.MARK_PLACES)
        distances = [np.linalg.norm(offset - np.array(world.MARK_PLACES[p])) for p in places]
        if min(distances) <= 3.0:
            mark = (list(world.MARK_COLOURS)[colour_index], places[int(np.argmin(distances))])
    if mark is None and head_found and FAINT_MARKS:
        mark = faint_mark(pixels, cx, cy, tone)
    return FaceReading(background, skin, hair_colour, hair_style, eye_colour, accessory, mark, head_found)


def likeness(image: Image.Image | np.ndarray, subject: world.ToySubject = world.DEFAULT_SUBJECT) -> float:
    """In [0, 1]: 0.5 for the subject's hidden mark (colour and place), 0.5 shared by skin, hair colour and hair
    style. A random face of the world scores about 0.15 on average."""
    reading = read_face(image)
    traits = [
        reading.skin == subject.skin,
        reading.hair_colour == subject.hair_colour or (subject.hair_style == "bald" and reading.hair_style == "bald"),
        reading.hair_style == subject.hair_style,
    ]
    return 0.5 * float(reading.mark == tuple(subject.mark)) + 0.5 * float(np.mean(traits))


def follows_prompt(image: Image.Image | np.ndarray, background: str | None = None, accessory: str | None = None) -> float:
    """Fraction of the requested attributes (background colour, accessory) the image shows; 1.0 if none requested."""
    reading = read_face(image)
    checks = []
    if background is not None:
        checks.append(reading.background == background)
    if accessory is not None:
        checks.append(reading.accessory == accessory)
    return float(np.mean(checks)) if checks else 1.0
