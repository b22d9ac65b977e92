"""The procedural shapes data and its checker (the embedded model's data and evaluation)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from diffalign.shapes import (SIZE, Scene, ShapeSpec, check, corrupt, make_dataset, parse_caption, render,
                              sample_scene)


def test_generation_is_deterministic_per_seed():
    first, again, other = make_dataset(20, seed=5), make_dataset(20, seed=5), make_dataset(20, seed=6)
    assert [s.caption for _, s in first] == [s.caption for _, s in again]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for (a, _), (b, _) in zip(first, again))
    assert [s.caption for _, s in first] != [s.caption for _, s in other]
    assert all(image.size == (SIZE, SIZE) and image.mode == "RGB" for image, _ in first)


def test_captions_parse_back_to_the_scene():
    rng = random.Random(0)
    for _ in range(300):
        scene = sample_scene(rng)
        parsed = parse_caption(scene.caption)
        assert len(parsed) == len(scene.objects)
        for said, truth in zip(parsed, scene.objects):
            assert (said.color, said.shape) == (truth.color, truth.shape)
            assert said.size in (None, truth.size) and said.position in (None, truth.position)
    assert parse_caption("a small blue square on the left") == (ShapeSpec("blue", "square", "small", "left"),)
    assert parse_caption("a red circle and a large green triangle") == (
        ShapeSpec("red", "circle", None, "left"), ShapeSpec("green", "triangle", "large", "right"))
    with pytest.raises(ValueError, match="not in the shapes grammar"):
        parse_caption("a photo of a cat")


def test_checker_accepts_ground_truth_and_rejects_corrupted_images():
    data = make_dataset(400, seed=1)
    assert all(check(image, scene.caption).correct for image, scene in data)
    rng = random.Random(2)
    assert not any(check(render(corrupt(scene, rng), rng), scene.caption).correct for _, scene in data)


def test_checker_reports_each_attribute():
    rng = random.Random(0)
    image = render(Scene((ShapeSpec("red", "circle", "large", "left"),), ""), rng)
    result = check(image, "a small red square on the right").objects[0]
    assert (result.color, result.shape, result.size, result.position) == (True, False, False, False)
    assert check(image, "a large red circle").objects[0].position is None
    blank = Image.new("RGB", (SIZE, SIZE), (240, 240, 235))
    assert not check(blank, "a blue triangle").objects[0].color
    both = check(image, "a red circle and a blue square")
    assert both.attribute_accuracy("color") == 0.5 and not both.correct


def test_checker_tolerates_mild_blur():
    """Generated samples are blurrier than renders: most stay recognisable after a 1 px Gaussian blur."""
    data = make_dataset(200, seed=3)
    blurred = [check(image.filter(ImageFilter.GaussianBlur(1.0)), scene.caption).correct for image, scene in data]
    assert np.mean(blurred) > 0.9
