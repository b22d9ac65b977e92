"""The README's main job, shortened: `diffalign demo` end to end on the embedded model and scorer."""

import json

import pytest

from diffalign.cli import main
from diffalign.demo import split_overrides

SHORT = ["--train-prompts", "3", "--images-per-prompt", "3", "--eval-limit", "3", "--eval-images-per-prompt", "1",
         "--inference-steps", "4"]


def test_demo_runs_end_to_end(tmp_path, capsys):
    args = ["demo", "--out", str(tmp_path), "--steps", "2", "--guidance", "3", *SHORT, "train.batch_size=2"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    for run in ("samples", "eval/base", "eval/dpo"):
        assert json.loads((tmp_path / run / "run.json").read_text())["guidance_scale"] == 3.0
    assert summary["methods"]["dpo"]["final_training_metrics"]["step"] == 2
    pairs = (tmp_path / "samples" / "pairs.jsonl").read_text().splitlines()
    assert len(pairs) == summary["labels"]["pairs"] > 0
    samples = summary["labels"]["samples"]["shapes-checker"]
    assert 0 <= samples["mean"] <= 1 and 0 <= samples["best_of_k"] <= 1
    assert (tmp_path / "dpo" / "pytorch_lora_weights.safetensors").is_file()
    for scorer in ("shapes-clip", "shapes-checker", "shapes-checker-fraction"):
        result = summary["held_out"][scorer]
        assert result["base"]["n"] == result["methods"]["dpo"]["aligned"]["n"] == 3
        assert 0 <= result["methods"]["dpo"]["vs_base"]["win_rate"]["rate"] <= 1
    report = (tmp_path / "report" / "index.html").read_text()
    assert "Diffusion-DPO training curves" in report and "grids/grid.png" in report
    assert (tmp_path / "report" / "plots" / "figure-00.png").is_file()
    printed = capsys.readouterr().out
    assert "diffalign demo finished" in printed and str(tmp_path / "report" / "index.html") in printed


def test_demo_trains_and_compares_every_method(tmp_path):
    online = [f"{method}:{setting}" for method in ("draft-k", "d3po")
              for setting in ("train.max_steps=1", "train.batch_size=2" if method == "draft-k" else
                              "train.rollout_prompts=2")]
    args = ["demo", "--out", str(tmp_path), "--steps", "1", "--methods", "dpo,rank-dpo,draft-k,d3po", *SHORT,
            "train.batch_size=1", *online]
    assert main(args) == 0
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    methods = ["dpo", "rank-dpo", "draft-k", "d3po"]
    assert list(summary["methods"]) == methods
    for method in methods:
        assert summary["methods"][method]["final_training_metrics"]["step"] == 1
        assert (tmp_path / method / "pytorch_lora_weights.safetensors").is_file()
        assert summary["held_out"]["shapes-checker"]["methods"][method]["aligned"]["n"] == 3
    ranked = [json.loads(line) for line in (tmp_path / "samples" / "ranked.jsonl").read_text().splitlines()]
    assert len(ranked) == 3 and all(len(record["images"]) == 3 for record in ranked)
    report = (tmp_path / "report" / "index.html").read_text()
    for index, title in enumerate(["Diffusion-DPO", "RankDPO (LiPO-lambda weights)", "DRaFT-K", "D3PO"]):
        assert f"{title} training curves" in report
        assert (tmp_path / "report" / "plots" / f"figure-{index:02d}.png").is_file()
    comparisons = json.loads((tmp_path / "report" / "summary.json").read_text())["comparisons"]
    assert [(item["a"], item["b"]) for item in comparisons] == [(method, "base") for method in methods]
    assert [summary["held_out"]["shapes-clip"]["methods"][method]["vs_base"] for method in methods] == \
        [item["scorers"]["shapes-clip"] for item in comparisons]


def test_demo_overrides_go_to_the_methods_they_name():
    routed = split_overrides(["train.beta=1000", "draft-k:train.max_steps=5", "rank-dpo:ranked.weighting=uniform"],
                             ["dpo", "rank-dpo", "draft-k"])
    assert routed == {"dpo": ["train.beta=1000"], "rank-dpo": ["train.beta=1000", "ranked.weighting=uniform"],
                      "draft-k": ["train.max_steps=5"]}
    with pytest.raises(ValueError, match="names method 'd3po', which is not among"):
        split_overrides(["d3po:train.max_steps=1"], ["dpo"])


def test_demo_says_what_to_change_when_the_labels_leave_too_few_pairs(tmp_path):
    from diffalign.demo import DemoSettings, run_demo

    settings = DemoSettings(train_prompts=2, images_per_prompt=2, eval_limit=1, eval_images_per_prompt=1,
                            num_inference_steps=2, margin=1e6)
    with pytest.raises(ValueError, match=r"0 preference pairs, fewer than one DPO batch \(8\).*Lower --margin"):
        run_demo(tmp_path, settings)
    assert len(list((tmp_path / "samples" / "images").glob("*.png"))) == 4  # the samples are kept for a re-run
