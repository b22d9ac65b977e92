"""Procedural image-caption data: 64x64 scenes of coloured shapes, and a checker for captions.

A scene holds one or two objects. Each object has a colour (6), a shape (circle, square,
triangle), a size (small, large) and a position (left, right, top, bottom, center), drawn on a
light background. Captions name what the scene shows:

    "a large red circle"                       one object: size, colour, shape
    "a small blue square on the left"          one object with its position
    "a green triangle and a yellow circle"     two objects, the first left of the second

:func:`check` reads an image and a caption and says, for each object of the caption, whether its
colour is present and, if so, whether its shape, size and position are right, using only pixel
statistics: pixels are assigned to the nearest palette colour, isolated pixels are dropped (3x3
majority), and the named colour's remaining pixels give the
object's fill ratio of its bounding box (square ~1, circle ~pi/4, triangle ~1/2), its extent and
its centroid. Everything is deterministic for a seed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30),
          "purple": (140, 60, 190), "orange": (245, 140, 30)}
BACKGROUND = (240, 240, 235)
SHAPES = ("circle", "square", "triangle")
HALF_EXTENT = {"small": (7, 10), "large": (14, 18)}  # half side length in pixels, inclusive range
POSITIONS = ("left", "right", "top", "bottom", "center")
CENTERS = {"left": (14, 32), "right": (50, 32), "top": (32, 14), "bottom": (32, 50), "center": (32, 32)}
JITTER = 4  # pixels of random offset around a position's center

MIN_PIXELS = 20  # fewer pixels of the named colour = the object is absent
SQUARE_FILL, TRIANGLE_FILL = 0.9, 0.65  # fill ratio above SQUARE_FILL = square, below TRIANGLE_FILL = triangle
LARGE_EXTENT = 23  # bounding-box side (pixels) above which an object counts as large
THIRD = SIZE / 3

# Every word a caption can use (the vocabulary of the embedded model's tokenizer).
WORDS = ("a", "an", "and", "on", "at", "in", "the", *HALF_EXTENT, *COLORS, *SHAPES, *POSITIONS)


@dataclass(frozen=True)
class ShapeSpec:
    """One object; None for attributes a caption leaves unsaid."""

    color: str
    shape: str
    size: str | None = None
    position: str | None = None


@dataclass(frozen=True)
class Scene:
    """Objects (1 or 2) and the caption that describes them."""

    objects: tuple[ShapeSpec, ...]
    caption: str


def sample_scene(rng: random.Random, two_object_fraction: float = 0.3,
                 position_fraction: float = 0.5) -> Scene:
    """A random scene and its caption. Two objects get distinct colours and sit left and right."""
    if rng.random() < two_object_fraction:
        first_color, second_color = rng.sample(list(COLORS), 2)
        objects = (ShapeSpec(first_color, rng.choice(SHAPES), "large" if rng.random() < 0.5 else "small", "left"),
                   ShapeSpec(second_color, rng.choice(SHAPES), "large" if rng.random() < 0.5 else "small", "right"))
        caption = f"a {_noun(objects[0])} and a {_noun(objects[1])}"
        return Scene(objects, caption)
    spec = ShapeSpec(rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(list(HALF_EXTENT)),
                     rng.choice(POSITIONS))
    caption = f"a {spec.size} {_noun(spec)}"
    if rng.random() < position_fraction:
        caption += " in the center" if spec.position == "center" else f" on the {spec.position}" if spec.position in (
            "left", "right") else f" at the {spec.position}"
    return Scene((spec,), caption)


def _noun(spec: ShapeSpec) -> str:
    return f"{spec.color} {spec.shape}"


def render(scene: Scene, rng: random.Random) -> Image.Image:
    """The scene as a SIZE x SIZE RGB image (positions jittered, sizes drawn from their range)."""
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for spec in scene.objects:
        half = rng.randint(*HALF_EXTENT[spec.size or "large"])
        if len(scene.objects) == 2:
            half = min(half, 14)
        base_x, base_y = CENTERS[spec.position or "center"]
        cx = int(np.clip(base_x + rng.randint(-JITTER, JITTER), half + 1, SIZE - half - 2))
        cy = int(np.clip(base_y + rng.randint(-JITTER, JITTER), half + 1, SIZE - half - 2))
        fill = COLORS[spec.color]
        if spec.shape == "circle":
            draw.ellipse((cx - half, cy - half, cx + half, cy + half), fill=fill)
        elif spec.shape == "square":
            draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)
        else:
            draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)
    return image


def parse_caption(caption: str) -> tuple[ShapeSpec, ...]:
    """The objects a caption names, with None for attributes it does not state.

    Raises ValueError for captions outside the generator's grammar.
    """
    text = caption.strip().lower()
    colors, shapes, sizes = "|".join(COLORS), "|".join(SHAPES), "|".join(HALF_EXTENT)
    noun = rf"(?:({sizes}) )?({colors}) ({shapes})"
    two = re.fullmatch(rf"an? {noun} and an? {noun}", text)
    if two:
        size_a, color_a, shape_a, size_b, color_b, shape_b = two.groups()
        return (ShapeSpec(color_a, shape_a, size_a, "left"), ShapeSpec(color_b, shape_b, size_b, "right"))
    one = re.fullmatch(rf"an? {noun}(?: (?:on|at|in) the ({'|'.join(POSITIONS)}))?", text)
    if one:
        size, color, shape, position = one.groups()
        return (ShapeSpec(color, shape, size, position),)
    raise ValueError(f"caption {caption!r} is not in the shapes grammar (e.g. 'a large red circle on the left', "
                     "'a red circle and a blue square')")


@dataclass(frozen=True)
class ObjectCheck:
    """What the checker found for one object of a caption (None: the caption does not say)."""

    color: bool
    shape: bool
    size: bool | None
    position: bool | None

    @property
    def correct(self) -> bool:
        """Every stated attribute is right."""
        return all(value is None or bool(value) for value in (self.color, self.shape, self.size, self.position))


@dataclass(frozen=True)
class CheckResult:
    objects: tuple[ObjectCheck, ...]

    @property
    def correct(self) -> bool:
        return all(item.correct for item in self.objects)

    @property
    def fraction_right(self) -> float:
        """Right attributes / stated attributes over all objects, in [0, 1] (colour and shape always count)."""
        values = [value for item in self.objects for value in (item.color, item.shape, item.size, item.position)
                  if value is not None]
        return sum(values) / len(values)

    def attribute_accuracy(self, attribute: str) -> float | None:
        """Fraction of objects whose ``attribute`` is right, over the objects where it is stated."""
        values = [getattr(item, attribute) for item in self.objects if getattr(item, attribute) is not None]
        return sum(values) / len(values) if values else None


def palette_labels(image: Image.Image) -> np.ndarray:
    """Per-pixel index of the nearest palette colour [SIZE, SIZE]: 0 = background, i = i-th of COLORS."""
    pixels = np.asarray(image.convert("RGB").resize((SIZE, SIZE)), dtype=np.float32)
    palette = np.array([BACKGROUND, *COLORS.values()], dtype=np.float32)
    distances = ((pixels[:, :, None, :] - palette[None, None]) ** 2).sum(-1)
    return distances.argmin(-1)


def object_area_fraction(image: Image.Image) -> float:
    """Share of the image's pixels, in [0, 1], whose nearest palette colour is not the background
    (every object together, speckle included; the caption plays no part)."""
    return float((palette_labels(image) != 0).mean())


def check(image: Image.Image, caption: str) -> CheckResult:
    """Check each object the caption names against the image (see the module docstring)."""
    labels = palette_labels(image)
    names = list(COLORS)
    results = []
    for spec in parse_caption(caption):
        mask = _majority(labels == names.index(spec.color) + 1)
        if mask.sum() < MIN_PIXELS:
            results.append(ObjectCheck(False, False, None if spec.size is None else False,
                                       None if spec.position is None else False))
            continue
        ys, xs = np.nonzero(mask)
        height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        fill = mask.sum() / (height * width)
        shape = "square" if fill > SQUARE_FILL else "triangle" if fill < TRIANGLE_FILL else "circle"
        size = "large" if max(height, width) > LARGE_EXTENT else "small"
        results.append(ObjectCheck(
            color=True, shape=shape == spec.shape,
            size=None if spec.size is None else size == spec.size,
            position=None if spec.position is None else bool(_position_ok(spec.position, xs.mean(), ys.mean()))))
    return CheckResult(tuple(results))


def _majority(mask: np.ndarray) -> np.ndarray:
    """Keep pixels with at least 5 of their 3x3 neighbourhood in the mask (drops speckle, keeps shapes)."""
    padded = np.pad(mask.astype(np.int32), 1)
    counts = sum(padded[1 + dy:1 + dy + mask.shape[0], 1 + dx:1 + dx + mask.shape[1]]
                 for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    return mask & (counts >= 5)


def _position_ok(position: str, x: float, y: float) -> bool:
    """Centroid (x, y) in pixels against a named position: left/right/top/bottom = at least 4 px past the
    middle on that side; center = inside the middle third on both axes."""
    if position == "left":
        return x < SIZE / 2 - 4
    if position == "right":
        return x > SIZE / 2 + 4
    if position == "top":
        return y < SIZE / 2 - 4
    if position == "bottom":
        return y > SIZE / 2 + 4
    return THIRD <= x <= 2 * THIRD and THIRD <= y <= 2 * THIRD


def make_dataset(count: int, seed: int, **sample_options) -> list[tuple[Image.Image, Scene]]:
    """``count`` (image, scene) pairs, deterministic for ``seed``."""
    rng = random.Random(seed)
    scenes = [sample_scene(rng, **sample_options) for _ in range(count)]
    return [(render(scene, rng), scene) for scene in scenes]


def corrupt(scene: Scene, rng: random.Random) -> Scene:
    """The same caption with one stated attribute of one object changed in the picture (a wrong image):
    colour or shape, or size or position where the caption states them."""
    index = rng.randrange(len(scene.objects))
    spec, stated = scene.objects[index], parse_caption(scene.caption)[index]
    choices = ["color", "shape"] + [name for name in ("size", "position") if getattr(stated, name) is not None]
    attribute = rng.choice(choices)
    if attribute == "color":
        used = {item.color for item in scene.objects}
        wrong = replace(spec, color=rng.choice([c for c in COLORS if c not in used]))
    elif attribute == "shape":
        wrong = replace(spec, shape=rng.choice([s for s in SHAPES if s != spec.shape]))
    elif attribute == "size":
        wrong = replace(spec, size="small" if spec.size == "large" else "large")
    else:
        wrong = replace(spec, position=FAR_POSITIONS[spec.position or "center"])
    objects = tuple(wrong if i == index else item for i, item in enumerate(scene.objects))
    return Scene(objects, scene.caption)


FAR_POSITIONS = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "center": "left"}
WORD_CLASSES = (tuple(COLORS), SHAPES, tuple(HALF_EXTENT))


def perturb_caption(caption: str, rng: random.Random) -> str:
    """A caption one word away from ``caption`` that describes a different scene: a colour, shape or
    size word replaced by another of its kind, a position moved, or two objects' order swapped."""
    words = caption.split()
    options = [i for i, word in enumerate(words) if any(word in group for group in WORD_CLASSES)]
    two_objects = " and " in caption
    if two_objects and rng.random() < 0.2:
        first, second = caption.split(" and ")
        return f"{second} and {first}"
    if not two_objects and words[-1] in POSITIONS and rng.random() < 0.3:
        position = rng.choice([p for p in POSITIONS if p != words[-1]])
        preposition = "in" if position == "center" else "on" if position in ("left", "right") else "at"
        return " ".join(words[:-3] + [preposition, "the", position])
    index = rng.choice(options)
    group = next(group for group in WORD_CLASSES if words[index] in group)
    words[index] = rng.choice([word for word in group if word not in words])
    return " ".join(words)


def mislabel_colors(captions: list[str], fraction: float, seed: int) -> list[str]:
    """Web-style caption noise for pretraining: ``round(fraction * len(captions))`` captions, chosen
    with ``seed``, get one colour word replaced by another colour (the image keeps its true colour).

    A model trained on them learns that a colour word names the right colour only part of the time,
    so its samples miss the colour for some seeds of a caption and not others."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"caption noise fraction must be in [0, 1], got {fraction}")
    rng = random.Random(seed)
    noisy = list(captions)
    for index in rng.sample(range(len(captions)), round(fraction * len(captions))):
        words = noisy[index].split()
        positions = [i for i, word in enumerate(words) if word in COLORS]
        if not positions:
            raise ValueError(f"caption {index} names no colour: {noisy[index]!r}")
        position = rng.choice(positions)
        words[position] = rng.choice([color for color in COLORS if color != words[position]])
        noisy[index] = " ".join(words)
    return noisy
