"""Write the tiny pairwise preference set used by demos and tests (deterministic for a seed).

Each image is 64x64 PNG: one coloured shape (circle, square or triangle; red, green, blue or
yellow) on a plain light background. Each pair's caption names a shape and a colour ("a red
circle"); the preferred image matches it and the other has the wrong colour or the wrong shape.
The preferred image is sometimes image_0 (label_0 = 1.0) and sometimes image_1 (label_0 = 0.0).
Two extra tie rows (label_0 = 0.5) show tie dropping.

Writes ``<out>/pairs.jsonl`` (keys caption, image_0, image_1, label_0; image paths relative to
the JSONL file) and ``<out>/images/*.png``:

    python scripts/make_tiny_preference_set.py --out assets/data/tiny-prefs --seed 0 --pairs 24
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 64
SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
BACKGROUNDS = ((245, 245, 240), (235, 240, 245), (240, 235, 230))
TIES = 2


def draw_scene(shape: str, color: str, rng: random.Random) -> Image.Image:
    """A SIZE x SIZE RGB image of one ``color`` ``shape`` at a random position and size."""
    image = Image.new("RGB", (SIZE, SIZE), rng.choice(BACKGROUNDS))
    draw = ImageDraw.Draw(image)
    half = rng.randint(12, 20)
    cx, cy = rng.randint(half + 2, SIZE - half - 2), rng.randint(half + 2, SIZE - half - 2)
    box = (cx - half, cy - half, cx + half, cy + half)
    fill = COLORS[color]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)
    return image


def wrong_scene(shape: str, color: str, rng: random.Random) -> tuple[str, str]:
    """A (shape, colour) that differs from the caption in either the colour or the shape."""
    if rng.random() < 0.5:
        return shape, rng.choice([c for c in COLORS if c != color])
    return rng.choice([s for s in SHAPES if s != shape]), color


def make_set(out: Path, seed: int, pairs: int) -> list[dict]:
    """Write ``pairs`` preference pairs plus TIES tie rows under ``out``; return the JSONL records."""
    rng = random.Random(seed)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for row in range(pairs + TIES):
        shape, color = SHAPES[row % len(SHAPES)], list(COLORS)[row % len(COLORS)]
        caption = f"a {color} {shape}"
        good = draw_scene(shape, color, rng)
        if row < pairs:
            bad = draw_scene(*wrong_scene(shape, color, rng), rng)
            label = 1.0 if row % 2 == 0 else 0.0
            first, second = (good, bad) if label == 1.0 else (bad, good)
        else:
            label, first, second = 0.5, good, draw_scene(shape, color, rng)
        names = []
        for side, image in enumerate((first, second)):
            name = f"images/{row:03d}_{side}.png"
            image.save(out / name, optimize=True)
            names.append(name)
        records.append({"caption": caption, "image_0": names[0], "image_1": names[1], "label_0": label})
    with (out / "pairs.jsonl").open("w", encoding="utf-8") as file:
        for record in records:
            file.write(json.dumps(record) + "\n")
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "assets/data/tiny-prefs",
                        help="Output folder (default: assets/data/tiny-prefs in the repository).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed (default: 0).")
    parser.add_argument("--pairs", type=int, default=24, help="Number of non-tie pairs (default: 24).")
    args = parser.parse_args()
    records = make_set(args.out, args.seed, args.pairs)
    print(f"wrote {len(records)} rows ({args.pairs} pairs, {TIES} ties) to {args.out / 'pairs.jsonl'}")


if __name__ == "__main__":
    main()
