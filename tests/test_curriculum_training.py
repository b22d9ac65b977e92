"""Curriculum DPO in the trainer: pairs from easy to hard, stage logging, gap validation, CLI."""

from __future__ import annotations

import json
import math
from itertools import islice

import pytest
import torch

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


def refresh_config(folder, model, path, *extra):
    return tiny_config(folder, model, f"data.path={path}", "cache.enabled=false", "curriculum.stages=2",
                       "curriculum.steps_per_stage=2", "curriculum.refresh_reference=true", "train.batch_size=2",
                       "train.max_steps=4", "train.learning_rate=1e-2", "train.warmup_steps=0", *extra)


def trained_weights(trainer):
    from diffalign.training.checkpoint import trainable_state_dict

    return trainable_state_dict(trainer.accelerator.unwrap_model(trainer.unet))


@pytest.mark.parametrize("lora", [True, False])
def test_reference_refresh_makes_the_stage_start_model_the_reference(tmp_path, tiny_sd, capsys, lora):
    path = pairs_with_gaps(tmp_path)
    trainer = DPOTrainer(refresh_config(tmp_path, tiny_sd, path, f"lora.enabled={str(lora).lower()}"))
    trainer.setup()
    trainer.run_steps()
    assert "reference refreshed: the model at step 2 is the reference of stage 1" in capsys.readouterr().out
    losses = [row["loss"] for row in trainer.history]
    # the first step of each stage compares the policy with itself: every logit is 0, the loss log 2
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)
    assert losses[2] == pytest.approx(math.log(2), abs=1e-6)
    assert abs(losses[1] - math.log(2)) > 1e-6 and abs(losses[3] - math.log(2)) > 1e-6
    assert [row["curriculum_pairs"] for row in trainer.history] == [12.0, 12.0, 24.0, 24.0]  # 24 pairs, cumulative
    assert trainer.reference.source_step == 2
    if lora:  # the reference adapter is frozen and not among the saved LoRA weights
        assert not any(".reference." in name for name in trained_weights(trainer))


def test_refreshed_reference_survives_a_resume(tmp_path, tiny_sd):
    path = pairs_with_gaps(tmp_path)
    straight = DPOTrainer(refresh_config(tmp_path / "a", tiny_sd, path))
    straight.setup()
    straight.run_steps()
    interrupted = DPOTrainer(refresh_config(tmp_path / "b", tiny_sd, path, "train.max_steps=3", "checkpoint.every=3"))
    interrupted.setup()
    interrupted.run_steps()
    interrupted._save_checkpoint()
    resumed = DPOTrainer(refresh_config(tmp_path / "b", tiny_sd, path, "checkpoint.resume_from=latest"))
    resumed.setup()
    assert resumed.global_step == 3 and resumed.reference.source_step == 2
    resumed.run_steps()
    expected, actual = trained_weights(straight), trained_weights(resumed)
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    assert resumed.history[-1]["loss"] == straight.history[-1]["loss"]

    plain = DPOTrainer(tiny_config(tmp_path / "c", tiny_sd, f"data.path={path}", "cache.enabled=false",
                                   "curriculum.stages=2", "curriculum.steps_per_stage=2", "train.batch_size=2",
                                   "train.max_steps=3", "checkpoint.every=3"))
    plain.setup()
    plain.run_steps()
    without = DPOTrainer(refresh_config(tmp_path / "c", tiny_sd, path, "checkpoint.resume_from=latest"))
    without.setup()
    with pytest.raises(RuntimeError, match="holds the reference of step None"):
        without.run_steps()
    with pytest.raises(ConfigError, match="refreshes the reference at curriculum stages"):
        tiny_config(tmp_path, tiny_sd, "curriculum.refresh_reference=true")
