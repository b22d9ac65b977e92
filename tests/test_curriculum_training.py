"""Curriculum DPO in the trainer: pairs from easy to hard, stage logging, gap validation, CLI."""

from __future__ import annotations

import json
from itertools import islice

import pytest

from conftest import TINY_PAIRS, tiny_config
from diffalign.cli import main
from diffalign.config import ConfigError
from diffalign.data import DataError
from diffalign.paths import asset
from diffalign.training import DPOTrainer


def pairs_with_gaps(folder, gap_of=lambda number: float(number)):
    """The tiny pair set with a gap per line (line number n -> gap_of(n)), images made absolute."""
    rows = [json.loads(line) for line in TINY_PAIRS.read_text().splitlines() if line.strip()]
    for number, row in enumerate(rows):
        row.update(gap=gap_of(number), image_0=str(TINY_PAIRS.parent / row["image_0"]),
                   image_1=str(TINY_PAIRS.parent / row["image_1"]))
    path = folder / "gapped.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_batches_follow_the_stages_from_easy_to_hard(tmp_path, tiny_sd):
    path = pairs_with_gaps(tmp_path)
    config = tiny_config(tmp_path, tiny_sd, f"data.path={path}", "cache.enabled=false", "curriculum.stages=2",
                         "curriculum.steps_per_stage=3", "curriculum.mode=exclusive", "train.batch_size=2")
    trainer = DPOTrainer(config)
    trainer.setup()
    gaps = trainer.dataset.table["gap"]
    first, second = trainer.curriculum
    assert min(gaps[i] for i in first.items) > max(gaps[i] for i in second.items)  # easy (large gap) first
    batches = list(islice(trainer._batches(), 6))
    assert all(int(i) in first.items for batch in batches[:3] for i in batch["index"])
    assert all(int(i) in second.items for batch in batches[3:] for i in batch["index"])


def test_cli_curriculum_dpo_logs_stages(tmp_path, tiny_sd, capsys):
    path = pairs_with_gaps(tmp_path)
    args = ["train", "curriculum-dpo", "--config", str(asset("configs", "tiny-dpo.yaml")), f"model.pretrained={tiny_sd}",
            f"data.path={path}", f"output_dir={tmp_path / 'run'}", f"cache.dir={tmp_path / 'cache'}",
            "train.max_steps=4", "train.batch_size=2", "logging.tracker=none", "logging.every=1",
            "validation.prompts=[]", "checkpoint.every=0", "curriculum.stages=2", "curriculum.steps_per_stage=2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert '"stage": 0' in printed and '"stage": 1' in printed and "from step 2" in printed
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["curriculum_stage"] for row in rows] == [0.0, 0.0, 1.0, 1.0]
    assert main([*args[:-2]]) == 2  # curriculum-dpo without stages
    assert "needs curriculum.stages > 0" in capsys.readouterr().err


def test_missing_or_partial_gaps_are_clear_errors(tmp_path, tiny_sd):
    with pytest.raises(ConfigError, match="needs a 'gap'"):
        DPOTrainer(tiny_config(tmp_path, tiny_sd, "cache.enabled=false", "curriculum.stages=2")).setup()
    lines = pairs_with_gaps(tmp_path).read_text().splitlines()
    partial = tmp_path / "partial.jsonl"
    partial.write_text(lines[0] + "\n" + json.dumps({k: v for k, v in json.loads(lines[1]).items() if k != "gap"}))
    from diffalign.data.pairs import load_pairs_jsonl

    with pytest.raises(DataError, match="partial.jsonl:2: key gap is given on some lines"):
        load_pairs_jsonl(partial)
    with pytest.raises(ConfigError, match="needs pairwise data.format=jsonl"):
        tiny_config(tmp_path, tiny_sd, "data.format=pickapic", "curriculum.stages=2")
