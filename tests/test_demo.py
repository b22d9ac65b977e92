"""The README's main job, shortened: `diffalign demo` end to end on the tiny pipeline."""

import json

from diffalign.cli import main


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--steps", "6"]) == 0
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    assert summary["final"]["step"] == 6
    assert (tmp_path / "dpo" / "pytorch_lora_weights.safetensors").is_file()
    assert (tmp_path / "before_after.png").is_file()
    assert summary["mean_abs_pixel_change_after_lora"] > 0
    assert "diffalign demo finished" in capsys.readouterr().out
