"""The README's main job, shortened: `diffalign demo` end to end on the embedded model and scorer."""

import json

from diffalign.cli import main


def test_demo_runs_end_to_end(tmp_path, capsys):
    args = ["demo", "--out", str(tmp_path), "--steps", "2", "--train-prompts", "3", "--images-per-prompt", "3",
            "--eval-limit", "3", "--eval-images-per-prompt", "1", "--inference-steps", "4", "train.batch_size=2"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    assert summary["final_training_metrics"]["step"] == 2
    pairs = (tmp_path / "samples" / "pairs.jsonl").read_text().splitlines()
    assert len(pairs) == summary["labels"]["pairs"] > 0
    samples = summary["labels"]["samples"]["shapes-checker"]
    assert 0 <= samples["mean"] <= 1 and 0 <= samples["best_of_k"] <= 1
    assert (tmp_path / "dpo" / "pytorch_lora_weights.safetensors").is_file()
    for scorer in ("shapes-clip", "shapes-checker", "shapes-checker-fraction"):
        result = summary["held_out"][scorer]
        assert result["base"]["n"] == result["dpo"]["n"] == 3
        assert 0 <= result["dpo_vs_base"]["win_rate"]["rate"] <= 1
    report = (tmp_path / "report" / "index.html").read_text()
    assert "Diffusion-DPO training curves" in report and "grids/grid.png" in report
    assert (tmp_path / "report" / "plots" / "figure-00.png").is_file()
    printed = capsys.readouterr().out
    assert "diffalign demo finished" in printed and str(tmp_path / "report" / "index.html") in printed
