"""Evaluation runs end to end on the tiny pipeline and tiny scorers: generate (seeded, resumable),
import, score, compare, report, scorer accuracy; through the Python API and the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from diffalign.cli import main
from diffalign.evaluation.generate import (GenerationError, GenerationSettings, generate_images, image_seed,
                                          load_eval_pipeline)
from diffalign.evaluation.prompts import PromptRecord, PromptSet, load_prompt_set
from diffalign.evaluation.scoring import RunFolderError, import_images, read_scores, score_run
from diffalign.paths import asset
from diffalign.scorers import get_scorer
from diffalign.tiny import build_random_pipeline, pipeline_config_dir

PROMPTS = PromptSet("test", [PromptRecord("00000", "a red circle", "colour"),
                             PromptRecord("00001", "a blue square", "shape"),
                             PromptRecord("00002", "a green triangle on the left", "position")])
FAST = dict(images_per_prompt=2, num_inference_steps=2, guidance_scale=5.0, height=64, width=64)


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


@pytest.fixture(scope="module")
def base_run(tiny_sd, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "base"
    pipeline = load_eval_pipeline(str(tiny_sd), device="cpu")
    return generate_images(pipeline, PROMPTS, out, GenerationSettings(**FAST, batch_size=3),
                           {"model": str(tiny_sd), "lora": None, "name": "base"}, progress=False)


def test_generation_writes_manifest_images_and_seeds(base_run):
    rows = [json.loads(line) for line in (base_run / "manifest.jsonl").read_text().splitlines()]
    assert [(r["prompt_id"], r["sample"]) for r in rows] == [(p, k) for p in ("00000", "00001", "00002") for k in (0, 1)]
    assert all(r["seed"] == image_seed(0, r["prompt_id"], r["sample"]) for r in rows)
    assert len({r["seed"] for r in rows}) == 6
    assert all(Image.open(base_run / r["image"]).size == (64, 64) for r in rows)
    run = json.loads((base_run / "run.json").read_text())
    assert run["name"] == "base" and run["images_per_prompt"] == 2 and run["guidance_scale"] == 5.0


def test_generation_resumes_and_does_not_depend_on_batching(base_run, tiny_sd, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(base_run, copy)
    (copy / "images" / "00001_01.png").unlink()
    pipeline = load_eval_pipeline(str(tiny_sd), device="cpu")
    calls = []
    original = pipeline.__class__.__call__
    pipeline.__class__.__call__ = lambda self, **kwargs: calls.append(len(kwargs["prompt"])) or original(self, **kwargs)
    try:
        generate_images(pipeline, PROMPTS, copy, GenerationSettings(**FAST, batch_size=1),
                        {"model": str(tiny_sd), "lora": None, "name": "base"}, progress=False)
    finally:
        pipeline.__class__.__call__ = original
    assert calls == [1], "only the missing image is generated"
    regenerated, original_image = pixels(copy / "images" / "00001_01.png"), pixels(base_run / "images" / "00001_01.png")
    assert np.abs(regenerated - original_image).max() <= 1, "batch of 1 reproduces the image made in a batch of 3"
    with pytest.raises(GenerationError, match="num_inference_steps: 2 -> 3"):
        generate_images(pipeline, PROMPTS, copy, GenerationSettings(**dict(FAST, num_inference_steps=3)),
                        {"model": str(tiny_sd), "lora": None}, progress=False)


def test_lora_changes_the_evaluated_pipeline(tiny_sd, tmp_path):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from diffalign.config import LoraConfig
    from diffalign.models import add_lora, lora_state_dict

    unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    for param in add_lora(unet, LoraConfig(rank=4)):
        torch.nn.init.normal_(param, std=0.5)
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=lora_state_dict(unet),
                                              safe_serialization=True)
    settings = GenerationSettings(**dict(FAST, images_per_prompt=1))
    one = PromptSet("one", PROMPTS.records[:1])
    base = generate_images(load_eval_pipeline(str(tiny_sd), device="cpu"), one, tmp_path / "a", settings, progress=False)
    tuned = generate_images(load_eval_pipeline(str(tiny_sd), lora=str(tmp_path / "lora"), device="cpu"), one,
                            tmp_path / "b", settings, progress=False)
    assert np.abs(pixels(base / "images/00000_00.png") - pixels(tuned / "images/00000_00.png")).mean() > 1


def test_scoring_matches_direct_scorer_calls_and_resumes(base_run, tiny_scorer_specs, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    specs = [tiny_scorer_specs["pickscore"], "jpeg-incompressibility"]
    table = score_run(run, specs, progress=False)
    assert list(table.columns[-2:]) == ["pickscore", "jpeg-incompressibility"]
    images = [Image.open(run / path).convert("RGB") for path in table["image"]]
    direct = get_scorer(specs[0])(images, list(table["prompt"]))
    assert np.allclose(read_scores(run)["pickscore"], direct.numpy(), atol=1e-5)
    meta = json.loads((run / "scorers.json").read_text())
    assert meta["pickscore"]["spec"] == specs[0] and meta["pickscore"]["path"] == "pil"

    monkeypatch.setattr("diffalign.evaluation.scoring.get_scorer", lambda *a, **k: pytest.fail("rescored"))
    score_run(run, specs, progress=False)
    with pytest.raises(RunFolderError, match="overwrite"):
        score_run(run, [tiny_scorer_specs["pickscore"] + ",batch_size=2"], progress=False)
    (run / "images" / "00002_01.png").unlink()
    with pytest.raises(RunFolderError, match="1 images .* missing"):
        score_run(run, ["jpeg-compressibility"], progress=False)


def test_import_hpsv2_layout(tmp_path):
    benchmark = tmp_path / "benchmark"
    benchmark.mkdir()
    (benchmark / "anime.json").write_text(json.dumps(["a cat", "a dog"]))
    (benchmark / "photo.json").write_text(json.dumps(["a car"]))
    prompts = load_prompt_set(f"hpsv2:{benchmark}")
    images = tmp_path / "images"
    for prompt_id, colour in (("anime/00000", "red"), ("anime/00001", "blue"), ("photo/00000", "green")):
        (images / prompt_id).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), colour).save(images / f"{prompt_id}.jpg")
    run = import_images(images, prompts, tmp_path / "run", name="other-tool")
    table = score_run(run, ["jpeg-incompressibility"], progress=False)
    assert list(table["category"]) == ["anime", "anime", "photo"] and (table["seed"] == -1).all()
    (images / "photo" / "00000.jpg").unlink()
    with pytest.raises(RunFolderError, match="1 of 3 prompts have no image"):
        import_images(images, prompts, tmp_path / "run2")


def test_cli_generate_score_compare_report_and_scorer_accuracy(tiny_sd, tiny_scorer_specs, tmp_path, capsys):
    other = build_random_pipeline(pipeline_config_dir("tiny-sd"), tmp_path / "other-model", seed=1)
    prompt_spec = "shapes-demo"
    common = ["--prompts", prompt_spec, "--limit", "4", "--images-per-prompt", "2", "--steps", "2",
              "--height", "64", "--width", "64", "--guidance", "5", "--device", "cpu"]
    assert main(["eval", "generate", "--model", str(tiny_sd), "--out", str(tmp_path / "a"), "--name", "base",
                 *common]) == 0
    assert main(["eval", "generate", "--model", str(other), "--out", str(tmp_path / "b"), "--name", "other",
                 *common]) == 0
    scorers = ["--scorer", tiny_scorer_specs["hpsv2.1"], "--scorer", tiny_scorer_specs["aesthetic"],
               "--resamples", "200"]
    assert main(["eval", "score", str(tmp_path / "a"), str(tmp_path / "b"), *scorers]) == 0
    printed = capsys.readouterr().out
    assert "base: 8 images, 4 prompts" in printed and "hpsv2.1:" in printed
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    scores = read_scores(tmp_path / "a")
    assert summary["scorers"]["aesthetic"]["overall"]["mean"] == pytest.approx(scores["aesthetic"].mean())

    assert main(["eval", "compare", str(tmp_path / "b"), str(tmp_path / "a"), "--out", str(tmp_path / "cmp"),
                 "--resamples", "200"]) == 0
    comparison = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    a, b = read_scores(tmp_path / "b")["hpsv2.1"].to_numpy(), scores["hpsv2.1"].to_numpy()
    win = comparison["scorers"]["hpsv2.1"]["win_rate"]
    assert (win["wins"], win["losses"]) == (int((a > b).sum()), int((a < b).sum()))
    assert pd.read_csv(tmp_path / "cmp" / "comparison.csv")["scorer"].nunique() == 2

    assert main(["eval", "report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "report")]) == 0
    html = (tmp_path / "report" / "index.html").read_text()
    assert "base" in html and "other" in html and "hpsv2.1" in html
    assert "report:" in capsys.readouterr().out

    pairs = asset("data", "tiny-prefs", "pairs.jsonl")
    assert main(["eval", "scorer-accuracy", "--scorer", tiny_scorer_specs["pickscore"], "--pairs", str(pairs),
                 "--out", str(tmp_path / "accuracy.json")]) == 0
    result = json.loads((tmp_path / "accuracy.json").read_text())
    assert result["n_pairs"] == 26 and 0 <= result["accuracy"] <= 1
