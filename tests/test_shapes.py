"""The procedural shapes data and its checker (the embedded model's data and evaluation)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from diffalign.shapes import (SIZE, Scene, ShapeSpec, check, corrupt, make_dataset, mislabel_colors, parse_caption,
                              perturb_caption, render, sample_scene)


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


def test_corruption_changes_a_stated_attribute_of_every_kind():
    rng = random.Random(3)
    scene = Scene((ShapeSpec("red", "circle", "large", "left"),), "a large red circle on the left")
    changed = set()
    for _ in range(60):
        wrong = corrupt(scene, rng).objects[0]
        differing = [name for name in ("color", "shape", "size", "position")
                     if getattr(wrong, name) != getattr(scene.objects[0], name)]
        assert len(differing) == 1
        changed.add(differing[0])
    assert changed == {"color", "shape", "size", "position"}
    unstated = Scene((ShapeSpec("red", "circle", "large", "left"),), "a red circle")
    assert all(corrupt(unstated, rng).objects[0].size == "large" for _ in range(30))


def test_perturbed_captions_stay_in_the_grammar_and_change_the_scene():
    rng = random.Random(4)
    for _ in range(300):
        caption = sample_scene(rng).caption
        other = perturb_caption(caption, rng)
        assert other != caption
        assert parse_caption(other) != parse_caption(caption)


def test_caption_noise_changes_one_colour_word_of_the_chosen_fraction():
    rng = random.Random(2)
    captions = [sample_scene(rng).caption for _ in range(200)]
    noisy = mislabel_colors(captions, 0.25, seed=3)
    assert noisy == mislabel_colors(captions, 0.25, seed=3) and noisy != mislabel_colors(captions, 0.25, seed=4)
    changed = [(true, wrong) for true, wrong in zip(captions, noisy) if true != wrong]
    assert len(changed) == 50
    for true, wrong in changed:
        differing = [(a, b) for a, b in zip(true.split(), wrong.split()) if a != b]
        assert len(differing) == 1
        (before, after), = differing
        assert before in ("red", "green", "blue", "yellow", "purple", "orange") and after != before
        assert len(parse_caption(wrong)) == len(parse_caption(true))
    assert mislabel_colors(captions, 0.0, seed=3) == captions
    with pytest.raises(ValueError, match="names no colour"):
        mislabel_colors(["a circle"], 1.0, seed=0)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        mislabel_colors(captions, 1.5, seed=0)


def test_fraction_right_counts_stated_attributes():
    rng = random.Random(0)
    image = render(Scene((ShapeSpec("red", "circle", "large", "left"),), ""), rng)
    assert check(image, "a small red square on the right").fraction_right == pytest.approx(1 / 4)
    assert check(image, "a red circle").fraction_right == 1.0
    both = check(image, "a red circle and a blue square")  # red circle ok (3/3); blue absent (0/3)
    assert both.fraction_right == pytest.approx(3 / 6)


def test_word_tokenizer_keeps_every_caption_word_whole(tmp_path):
    from diffalign.shapes import WORDS
    from diffalign.tiny import write_word_tokenizer

    tokenizer = write_word_tokenizer(tmp_path / "tok", WORDS)
    assert all(tokenizer.tokenize(word) == [word + "</w>"] for word in WORDS)
    ids = tokenizer("a large red circle on the left").input_ids
    assert len(ids) == 2 + 7 and ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.tokenize("a red cat")[-1] != "<|endoftext|>"  # unknown words fall back to characters
