"""Synthetic ranked data: generate K images per prompt from several models, rank with a scorer ensemble."""

import pytest

from diffalign.data import DataError
from diffalign.data.ranked import read_ranked_jsonl
from diffalign.data.synth import ShardSpec, synthesize_ranked
from diffalign.evaluation.generate import GenerationSettings
from diffalign.evaluation.prompts import load_prompt_set
from diffalign.paths import asset

SCORERS = ["shapes-clip", "shapes-checker-fraction"]
SHAPES_SD = str(asset("models", "shapes-sd"))


def settings(**changes):
    return GenerationSettings(**{"images_per_prompt": 2, "num_inference_steps": 3, "guidance_scale": 5.0,
                                 "height": 64, "width": 64, "batch_size": 4, **changes})


def test_two_models_one_shard_ranked_and_resumable(tmp_path):
    prompts = load_prompt_set("shapes-demo").subset(limit=5)
    models = {"base": SHAPES_SD, "again": SHAPES_SD}
    path = synthesize_ranked(prompts, models, SCORERS, tmp_path, settings(), ShardSpec(1, 2), device="cpu")
    assert path.name == "ranked-00001-of-00002.jsonl"
    records = read_ranked_jsonl(path)
    assert [r.prompt for r in records] == [prompts.records[i].text for i in (1, 3)]  # every 2nd prompt from 1
    for record in records:
        assert record.k == 4 and record.sources == ["base", "base", "again", "again"]
        assert record.seeds[:2] == record.seeds[2:]  # the same seeds (noise) for both models
        assert set(record.raw_scores) == set(SCORERS)
        assert sum(record.labels) == pytest.approx(record.k / 2)  # win fractions sum to K/2 per prompt
        # the same model and seeds make the same images: equal raw scores, so equal labels
        assert record.raw_scores["shapes-clip"][:2] == pytest.approx(record.raw_scores["shapes-clip"][2:], abs=1e-4)
    images = sorted((tmp_path / "runs").rglob("*.png"))
    stamps = [image.stat().st_mtime_ns for image in images]
    again = synthesize_ranked(prompts, models, SCORERS, tmp_path, settings(), ShardSpec(1, 2), device="cpu")
    assert read_ranked_jsonl(again) == records
    assert [image.stat().st_mtime_ns for image in images] == stamps  # resumed: nothing regenerated


def test_bad_requests_are_clear_errors(tmp_path):
    prompts = load_prompt_set("shapes-demo").subset(limit=2)
    with pytest.raises(DataError, match="K >= 2"):
        synthesize_ranked(prompts, {"m": SHAPES_SD}, SCORERS, tmp_path, settings(images_per_prompt=1))
    with pytest.raises(DataError, match="0 <= index < count"):
        ShardSpec(2, 2)
    with pytest.raises(DataError, match="shard 3 of 4 .* is empty"):
        synthesize_ranked(prompts, {"m": SHAPES_SD}, SCORERS, tmp_path, settings(), ShardSpec(3, 4))
    with pytest.raises(DataError, match="at least one scorer"):
        synthesize_ranked(prompts, {"m": SHAPES_SD}, [], tmp_path, settings())


def test_cli_synth_writes_ranked_jsonl(tmp_path, capsys):
    from diffalign.cli import main

    args = ["data", "synth", "--prompts", "shapes-demo", "--limit", "2", "--model", f"tiny={SHAPES_SD}",
            "--scorer", "shapes-clip", "--out", str(tmp_path), "--images-per-prompt", "2", "--steps", "2",
            "--height", "64", "--width", "64", "--device", "cpu"]
    assert main(args) == 0
    (first, second) = read_ranked_jsonl(tmp_path / "ranked-00000-of-00001.jsonl")
    assert first.sources == ["tiny", "tiny"] and sorted(first.labels) in ([0.0, 1.0], [0.5, 0.5])
    assert "ranked records:" in capsys.readouterr().out
    assert main([*args[:-2], "--shard", "2"]) == 2
    assert "--shard must be INDEX/COUNT" in capsys.readouterr().err
