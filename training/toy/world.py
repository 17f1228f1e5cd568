"""A procedural, captioned world of cartoon faces small enough to train a diffusion model on a CPU.

Every image is drawn from a :class:`FaceSpec` with numpy only (4x supersampled, then box-filtered to ``SIZE`` px), so
the same ``(seed, index)`` always gives the same pixels. Captions name the visible attributes in plain words; a face
may also carry a *mark* (a small coloured square on the left cheek, right cheek or chin) that captions never name.
A :class:`ToySubject` is one fixed face whose distinguishing detail is exactly such an unnamed mark, photographed a
few times with pose jitter and different backgrounds -- the toy analogue of "a few photos of a person".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from PIL import Image

SIZE = 32
SUPERSAMPLE = 4

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "red": (215, 55, 55),
    "green": (60, 165, 75),
    "blue": (55, 85, 205),
    "yellow": (235, 205, 60),
    "purple": (135, 70, 175),
    "grey": (150, 150, 150),
}
SKINS: dict[str, tuple[int, int, int]] = {"light": (250, 218, 190), "tan": (214, 160, 112), "dark": (135, 90, 55)}
HAIR_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 28),
    "brown": (90, 50, 20),
    "blond": (250, 235, 120),
    "red": (200, 85, 20),
    "white": (235, 235, 235),
}
HAIR_STYLES = ("short", "long", "bald")
EYE_COLOURS: dict[str, tuple[int, int, int]] = {"blue": (30, 90, 230), "green": (30, 160, 50), "brown": (95, 55, 25)}
MOUTHS = ("smiling", "neutral", "surprised")
ACCESSORIES = ("none", "glasses", "hat")
HEAD_SHAPES: dict[str, tuple[float, float]] = {"round": (8.5, 9.5), "oval": (7.5, 10.3)}
# Hidden marks: never named in a caption.
MARK_COLOURS: dict[str, tuple[int, int, int]] = {"magenta": (235, 30, 205), "cyan": (30, 225, 235), "lime": (150, 245, 0)}
MARK_PLACES: dict[str, tuple[float, float]] = {"left cheek": (-4.6, 3.2), "right cheek": (4.6, 3.2), "chin": (0.0, 7.6)}
MARK_HALF = 2.0
HAT_COLOUR = (40, 40, 110)
GLASSES_COLOUR = (15, 15, 15)
EYE_WHITE = (250, 250, 250)
MOUTH_COLOUR = (140, 20, 30)
CENTRE = (16.0, 17.0)
JITTER = 1.5
# Backgrounds of a subject's photos; the others (yellow, purple) are the experiments' new scenes.
PHOTO_BACKGROUNDS = ("red", "green", "blue", "grey")
EYE_OFFSET = (3.5, -1.0)


@dataclass(frozen=True)
class FaceSpec:
    """Everything that decides one image. ``mark`` is ``None`` or ``(mark colour, mark place)``."""

    background: str
    skin: str
    hair_colour: str
    hair_style: str
    eye_colour: str
    mouth: str
    accessory: str
    head_shape: str = "round"
    mark: tuple[str, str] | None = None
    dx: float = 0.0
    dy: float = 0.0

    def caption(self) -> str:
        """Plain words for the visible attributes (the mark is never named)."""
        return caption_for(self)

    def replace(self, **changes) -> FaceSpec:
        return dataclasses.replace(self, **changes)


CAPTION_PARTS = ("mouth", "head_shape", "skin", "hair", "eyes", "accessory", "background")


def caption_for(spec: FaceSpec, subject_phrase: str | None = None, omit: frozenset[str] | set[str] = frozenset()) -> str:
    """``a smiling round cartoon face with tan skin, short red hair and green eyes, wearing glasses, on a blue
    background``. ``omit`` leaves out some of :data:`CAPTION_PARTS` (as real captions leave things unsaid: the base
    model learns that an unnamed attribute can be anything). With ``subject_phrase`` (e.g. ``"<new1> cartoon face"``)
    the face's own attributes are left out: that is how a subject's photos are captioned -- only what changes between
    photos (background, accessory)."""
    if subject_phrase is None:
        adjectives = [spec.mouth] * ("mouth" not in omit) + [spec.head_shape] * ("head_shape" not in omit)
        traits = []
        if "skin" not in omit:
            traits.append(f"{spec.skin} skin")
        if "hair" not in omit:
            traits.append("no hair" if spec.hair_style == "bald" else f"{spec.hair_style} {spec.hair_colour} hair")
        if "eyes" not in omit:
            traits.append(f"{spec.eye_colour} eyes")
        first = (adjectives or ["cartoon"])[0]
        text = " ".join(["an" if first[0] in "aeiou" else "a", *adjectives, "cartoon face"])
        if traits:
            text += " with " + (traits[0] if len(traits) == 1 else f"{', '.join(traits[:-1])} and {traits[-1]}")
    else:
        text = f"a {subject_phrase}"
    if spec.accessory != "none" and "accessory" not in omit:
        text += f", wearing {'a hat' if spec.accessory == 'hat' else 'glasses'}"
    return text if "background" in omit else f"{text}, on a {spec.background} background"


def random_omissions(rng: np.random.Generator, name_probability: float) -> frozenset[str]:
    """Each caption part is left out with probability ``1 - name_probability``."""
    return frozenset(part for part in CAPTION_PARTS if rng.random() >= name_probability)


def random_spec(rng: np.random.Generator, mark_probability: float = 0.5) -> FaceSpec:
    """A uniformly random face; half of them carry a random unnamed mark."""

    def pick(options):
        return list(options)[int(rng.integers(len(options)))]

    mark = (pick(MARK_COLOURS), pick(MARK_PLACES)) if rng.random() < mark_probability else None
    return FaceSpec(
        background=pick(BACKGROUNDS),
        skin=pick(SKINS),
        hair_colour=pick(HAIR_COLOURS),
        hair_style=pick(HAIR_STYLES),
        eye_colour=pick(EYE_COLOURS),
        mouth=pick(MOUTHS),
        accessory=pick(ACCESSORIES),
        head_shape=pick(HEAD_SHAPES),
        mark=mark,
        dx=float(rng.uniform(-JITTER, JITTER)),
        dy=float(rng.uniform(-JITTER, JITTER)),
    )


def sample_specs(count: int, seed: int, mark_probability: float = 0.5) -> list[FaceSpec]:
    """``count`` random faces; the same ``seed`` gives the same faces."""
    rng = np.random.default_rng(seed)
    return [random_spec(rng, mark_probability) for _ in range(count)]


def head_centre(spec: FaceSpec) -> tuple[float, float]:
    return CENTRE[0] + spec.dx, CENTRE[1] + spec.dy


def render_array(spec: FaceSpec, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """The face as a ``[SIZE, SIZE, 3]`` uint8 array (layers painted back to front, then box-filtered).
    ``supersample=1`` draws the same face without anti-aliasing: hard pixel edges, the toy world's second style."""
    n = SIZE * supersample
    coords = (np.arange(n) + 0.5) / supersample
    y, x = np.meshgrid(coords, coords, indexing="ij")
    canvas = np.empty((n, n, 3), dtype=np.float32)
    canvas[:] = BACKGROUNDS[spec.background]
    cx, cy = head_centre(spec)
    rx, ry = HEAD_SHAPES[spec.head_shape]

    def ellipse(ex, ey, ax, ay):
        return ((x - ex) / ax) ** 2 + ((y - ey) / ay) ** 2 <= 1.0

    def paint(mask, colour):
        canvas[mask] = colour

    head = ellipse(cx, cy, rx, ry)
    hair = HAIR_COLOURS[spec.hair_colour]
    if spec.hair_style == "long":
        paint(ellipse(cx, cy - 0.5, rx + 1.6, ry + 1.6) | ((np.abs(x - cx) <= rx + 1.6) & (y >= cy) & (y <= cy + 7.5)), hair)
    elif spec.hair_style == "short":
        paint(ellipse(cx, cy - 0.5, rx + 1.0, ry + 1.2) & (y <= cy - 3.5), hair)
    paint(head, SKINS[spec.skin])
    if spec.hair_style != "bald":
        paint(head & (y <= cy - 5.0), hair)
    for side in (-1, 1):
        ex, ey = cx + side * EYE_OFFSET[0], cy + EYE_OFFSET[1]
        paint(ellipse(ex, ey, 1.7, 1.5), EYE_WHITE)
        paint(ellipse(ex, ey, 1.0, 1.0), EYE_COLOURS[spec.eye_colour])
    if spec.mouth == "smiling":
        radius = np.hypot(x - cx, y - (cy + 1.5))
        paint((radius >= 3.2) & (radius <= 4.4) & (y >= cy + 3.6), MOUTH_COLOUR)
    elif spec.mouth == "neutral":
        paint((np.abs(x - cx) <= 2.6) & (np.abs(y - (cy + 5.0)) <= 0.6), MOUTH_COLOUR)
    else:
        paint(ellipse(cx, cy + 5.0, 1.8, 1.5), MOUTH_COLOUR)
    if spec.mark is not None:
        colour, place = spec.mark
        mx, my = cx + MARK_PLACES[place][0], cy + MARK_PLACES[place][1]
        paint((np.abs(x - mx) <= MARK_HALF) & (np.abs(y - my) <= MARK_HALF), MARK_COLOURS[colour])
    if spec.accessory == "glasses":
        for side in (-1, 1):
            ring = np.hypot(x - (cx + side * EYE_OFFSET[0]), y - (cy + EYE_OFFSET[1]))
            paint((ring >= 2.0) & (ring <= 3.1), GLASSES_COLOUR)
        paint((np.abs(x - cx) <= 1.2) & (np.abs(y - (cy + EYE_OFFSET[1])) <= 0.7), GLASSES_COLOUR)
    elif spec.accessory == "hat":
        paint((np.abs(x - cx) <= 6.0) & (y >= cy - 19.0) & (y <= cy - 9.0), HAT_COLOUR)
        paint((np.abs(x - cx) <= 10.0) & (y >= cy - 10.4) & (y <= cy - 8.6), HAT_COLOUR)
    small = canvas.reshape(SIZE, supersample, SIZE, supersample, 3).mean(axis=(1, 3))
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def render(spec: FaceSpec) -> Image.Image:
    return Image.fromarray(render_array(spec), mode="RGB")


@dataclass(frozen=True)
class ToySubject:
    """One specific face. Its identity is its fixed attributes plus an unnamed mark; ``class_phrase`` is what the
    base model calls such a thing (the class word of the baseline and of regularisation prompts)."""

    skin: str = "tan"
    hair_colour: str = "red"
    hair_style: str = "short"
    eye_colour: str = "green"
    mouth: str = "smiling"
    head_shape: str = "round"
    mark: tuple[str, str] = ("cyan", "left cheek")
    class_phrase: str = "cartoon face"

    def spec(self, background: str, accessory: str = "none", dx: float = 0.0, dy: float = 0.0) -> FaceSpec:
        return FaceSpec(
            background=background, skin=self.skin, hair_colour=self.hair_colour, hair_style=self.hair_style,
            eye_colour=self.eye_colour, mouth=self.mouth, accessory=accessory, head_shape=self.head_shape,
            mark=self.mark, dx=dx, dy=dy,
        )

    def photo_specs(self, count: int = 6, seed: int = 0, backgrounds: tuple[str, ...] = PHOTO_BACKGROUNDS) -> list[FaceSpec]:
        """``count`` photos: pose jitter and one of ``backgrounds`` each time (shuffled, cycled), no accessory. The
        default leaves yellow and purple out, so prompts on those backgrounds ask for scenes the photos never show."""
        unknown = sorted(set(backgrounds) - set(BACKGROUNDS))
        if unknown or not backgrounds:
            raise ValueError(f"photo backgrounds must be some of {list(BACKGROUNDS)}, got {list(backgrounds)}.")
        rng = np.random.default_rng(seed)
        names = list(backgrounds)
        order = [names[i] for i in rng.permutation(len(names))]
        return [
            self.spec(order[i % len(order)], dx=float(rng.uniform(-JITTER, JITTER)), dy=float(rng.uniform(-JITTER, JITTER)))
            for i in range(count)
        ]


DEFAULT_SUBJECT = ToySubject()


def draw_subject(seed: int) -> ToySubject:
    """A subject drawn from the world: every fixed attribute and the mark uniformly at random from ``seed``.
    The population experiments draw their tuning and test subjects this way (different seeds, disjoint sets)."""
    rng = np.random.default_rng([seed, 14])

    def pick(options):
        return list(options)[int(rng.integers(len(options)))]

    return ToySubject(skin=pick(SKINS), hair_colour=pick(HAIR_COLOURS), hair_style=pick(HAIR_STYLES),
                      eye_colour=pick(EYE_COLOURS), mouth=pick(MOUTHS), head_shape=pick(HEAD_SHAPES),
                      mark=(pick(MARK_COLOURS), pick(MARK_PLACES)))
