"""The embedded tiny model and scorer in assets/models load through the code paths users run, and work;
the scripts that trained them run (a few steps) and resume."""

from __future__ import annotations

import json
import random
import runpy
import sys

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from diffalign import shapes
from diffalign.paths import asset
from diffalign.scorers import get_scorer
from diffalign.unets import PositionalUNet2DConditionModel

HELD_OUT = ["a large red circle", "a small blue square on the left", "a large green triangle at the top",
            "a yellow circle and a purple square", "a large orange square in the center", "a small purple triangle"]


def test_shipped_pipeline_loads_with_from_pretrained_and_draws_the_prompt():
    pipeline = StableDiffusionPipeline.from_pretrained(asset("models", "shapes-sd"))
    pipeline.set_progress_bar_config(disable=True)
    assert pipeline.tokenizer.tokenize("a small purple triangle") == ["a</w>", "small</w>", "purple</w>", "triangle</w>"]
    prompts = HELD_OUT * 2
    images = pipeline(prompts, num_inference_steps=20, guidance_scale=5.0,
                      generator=[torch.Generator().manual_seed(i) for i in range(len(prompts))]).images
    assert all(image.size == (shapes.SIZE, shapes.SIZE) for image in images)
    results = [shapes.check(image, prompt) for image, prompt in zip(images, prompts)]
    color_accuracy = np.mean([r.attribute_accuracy("color") for r in results])
    assert color_accuracy > 1 / len(shapes.COLORS) + 0.15  # well above chance (1/6), though trained on noisy colours
    assert np.mean([r.correct for r in results]) > 0.1


def test_shipped_scorer_prefers_the_right_image_of_a_caption():
    scorer = get_scorer("shapes-clip", device="cpu")
    rng = random.Random(123)
    scenes = [shapes.sample_scene(rng) for _ in range(100)]
    right = [shapes.render(scene, rng) for scene in scenes]
    wrong = [shapes.render(shapes.corrupt(scene, rng), rng) for scene in scenes]
    captions = [scene.caption for scene in scenes]
    assert (scorer(right, captions) > scorer(wrong, captions)).float().mean() > 0.85


def test_checker_scorers_score_ground_truth_and_wrong_images():
    rng = random.Random(5)
    scenes = [shapes.sample_scene(rng) for _ in range(30)]
    right = [shapes.render(scene, rng) for scene in scenes]
    wrong = [shapes.render(shapes.corrupt(scene, rng), rng) for scene in scenes]
    captions = [scene.caption for scene in scenes]
    checker, fraction = get_scorer("shapes-checker"), get_scorer("shapes-checker-fraction")
    assert checker(right, captions).tolist() == [1.0] * 30
    assert checker(wrong, captions).tolist() == [0.0] * 30
    assert fraction(right, captions).tolist() == [1.0] * 30
    assert (fraction(wrong, captions) < 1).all()
    with pytest.raises(TypeError, match="no differentiable"):
        checker(torch.rand(1, 3, 64, 64), "a red circle", path="tensor")


def test_area_scorer_is_the_share_of_object_pixels():
    blank = Image.new("RGB", (64, 64), shapes.BACKGROUND)
    rectangle = blank.copy()
    rectangle.paste(shapes.COLORS["red"], (10, 20, 30, 36))  # 20 x 16 pixels
    large = shapes.Scene((shapes.ShapeSpec("blue", "square", "large", "center"),), "a large blue square")
    small = shapes.Scene((shapes.ShapeSpec("blue", "square", "small", "center"),), "a small blue square")
    images = [blank, rectangle, shapes.render(large, random.Random(0)), shapes.render(small, random.Random(0))]
    scores = get_scorer("shapes-area")(images).tolist()
    assert scores[:2] == [0.0, pytest.approx(320 / 4096)]
    assert scores[2] > 2 * scores[3] > 0
    assert get_scorer("shapes-area")(images, ["ignored"] * 4).tolist() == scores


def _run_script(name: str, args: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [name, *args])
    runpy.run_path(str(asset("..", "scripts", name)), run_name="__main__")


def test_pretrain_scripts_run_resume_and_write_loadable_folders(tmp_path, monkeypatch):
    scorer_args = ["--out", str(tmp_path / "clip"), "--work", str(tmp_path / "clip-work"), "--eval-scenes", "8"]
    _run_script("pretrain_tiny_scorer.py", [*scorer_args, "--steps", "2", "--eval-every", "2",
                                            "--preference-steps", "0"], monkeypatch)
    _run_script("pretrain_tiny_scorer.py", [*scorer_args, "--steps", "3", "--eval-every", "3",
                                            "--preference-steps", "0"], monkeypatch)
    steps = [json.loads(line)["step"] for line in (tmp_path / "clip-work" / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 3]  # the second run resumed at step 2
    assert "model_samples_after_preferences" not in json.loads((tmp_path / "clip" / "pretrain_report.json").read_text())
    # the PickScore-style stage on the shipped pipeline's samples, the checker as the rater
    _run_script("pretrain_tiny_scorer.py", [*scorer_args, "--steps", "3", "--eval-every", "3",
                                            "--pipeline", str(asset("models", "shapes-sd")), "--preference-steps", "3",
                                            "--preference-captions", "6", "--preference-images", "3",
                                            "--validation-captions", "2", "--preference-pairs", "4"], monkeypatch)
    steps = [json.loads(line)["step"] for line in (tmp_path / "clip-work" / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 3]  # the contrastive stage was done: only the preference stage ran
    preference_log = (tmp_path / "clip-work" / "preference-log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in preference_log] == [3]
    report = json.loads((tmp_path / "clip" / "pretrain_report.json").read_text())
    assert report["preference_pairs"] > 0 and report["validation_captions"] == 2
    after = report["model_samples_after_preferences"]
    assert 0 <= after["pair_agreement_with_checker"] <= 1
    assert after["checker_all_right_mean"] <= after["checker_all_right_oracle_best_of_k"]
    scores = get_scorer(f"shapes-clip:model={tmp_path / 'clip'}")([shapes.render(shapes.sample_scene(random.Random(0)),
                                                                                  random.Random(0))], "a red circle")
    assert scores.shape == (1,) and torch.isfinite(scores).all()

    _run_script("pretrain_tiny.py", ["--out", str(tmp_path / "sd"), "--work", str(tmp_path / "sd-work"),
                                     "--vae-steps", "2", "--vae-batch-size", "4", "--scenes", "32", "--steps", "2",
                                     "--batch-size", "4", "--eval-every", "2", "--eval-images", "2",
                                     "--unet-channels", "16,32,32", "--position-embedding",
                                     "--noise-schedule", "zero-snr-v"], monkeypatch)
    report = json.loads((tmp_path / "sd" / "pretrain_report.json").read_text())
    assert set(report["held_out_checker"]) == {"guidance_1", "guidance_3", "guidance_5", "guidance_7.5"}
    assert report["unet_channels"] == [16, 32, 32]
    assert report["position_embedding"] and report["noise_schedule"] == "zero-snr-v"
    pipeline = StableDiffusionPipeline.from_pretrained(tmp_path / "sd")
    assert pipeline.unet.config.block_out_channels == [16, 32, 32]
    assert isinstance(pipeline.unet, PositionalUNet2DConditionModel)
    assert pipeline.scheduler.config.prediction_type == "v_prediction"
    assert pipeline.scheduler.alphas_cumprod[-1] == 0 and pipeline.scheduler.config.timestep_spacing == "trailing"
    assert pipeline.vae.config.scaling_factor != 0.18215  # set from the latents' std
    image = pipeline("a red circle", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (shapes.SIZE, shapes.SIZE, 3)


def test_word_probe_finds_the_words_the_shipped_denoiser_uses():
    module = runpy.run_path(str(asset("..", "scripts", "probe_caption_words.py")))
    assert [module["swap_word"](word) for word in ("left", "center", "small", "orange", "circle")] == [
        "right", "left", "large", "red", "square"]
    pipeline = StableDiffusionPipeline.from_pretrained(asset("models", "shapes-sd"))
    ratios = module["word_sensitivity"](pipeline, scenes=48, seed=5, batch_size=48)
    assert set(ratios) == {"colour", "shape", "size", "position"}
    assert ratios["shape"]["t>=500"] > 1.3 and ratios["size"]["t>=500"] > 1.3
    assert ratios["position"]["t>=500"] > 1.5  # the first shipped model ignored position words (1.00)
    assert 1.05 < ratios["colour"]["t>=500"] < ratios["shape"]["t>=500"]  # half its training colour words were wrong


def test_colour_decision_probe_switches_the_caption_mid_sampling():
    module = runpy.run_path(str(asset("..", "scripts", "probe_caption_words.py")))
    pipeline = StableDiffusionPipeline.from_pretrained(asset("models", "shapes-sd"))
    pipeline.set_progress_bar_config(disable=True)
    result = module["colour_decision"](pipeline, count=6, seed=3, switch_after=[0, 1, 3], steps=3)
    assert set(result) == {0, 1, 3} and all(set(row) == {"first", "second"} for row in result.values())
    # k = steps never switches, k = 0 samples the second caption throughout: both equal plain sampling
    first, second = module["colour_swapped_captions"](6, 3)
    for a, b in zip(first, second):  # exactly one word differs, a colour in both
        changed = [(x, y) for x, y in zip(a.split(), b.split(), strict=True) if x != y]
        assert len(changed) == 1 and all(word in shapes.COLORS for word in changed[0])
    for k, captions in ((3, first), (0, second)):
        images = pipeline(captions, num_inference_steps=3, guidance_scale=5.0,
                          generator=[torch.Generator().manual_seed(3 + i) for i in range(6)]).images
        expected = np.mean([shapes.check(image, caption).attribute_accuracy("color")
                            for image, caption in zip(images, first)])
        assert result[k]["first"] == pytest.approx(expected)
    assert result[1] != result[3]  # switching after the first step changes the images
