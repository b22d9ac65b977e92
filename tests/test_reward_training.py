"""Direct reward fine-tuning (DRaFT family, AlignProp, ReFL) on the tiny SD model with the shapes-clip reward."""

from __future__ import annotations

import json

import pytest
import torch

from diffalign.config import ConfigError, RewardRunConfig, load_config
from diffalign.training.checkpoint import trainable_state_dict
from diffalign.training.reward import RewardTrainer

STEPS = 3


def reward_config(tmp_path, model, *overrides):
    tmp_path.mkdir(parents=True, exist_ok=True)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                               ["a red circle", "a blue square", "a large green triangle on the left", "a red circle and a blue square"]))
    return load_config(None, [
        f"model.pretrained={model}", f"prompts.train=jsonl:{prompts}", f"prompts.held_out=jsonl:{prompts}",
        "prompts.held_out_limit=2", f"output_dir={tmp_path / 'run'}", "reward.scorer=shapes-clip",
        f"sampling.num_inference_steps={STEPS}", "sampling.guidance_scale=3", "train.batch_size=2",
        "train.max_steps=2", "train.learning_rate=1e-2", "logging.tracker=none", "logging.every=1",
        "checkpoint.every=0", "lora.rank=4", *overrides], cls=RewardRunConfig)


def trainer_for(config):
    trainer = RewardTrainer(config)
    trainer.setup()
    return trainer


@pytest.mark.parametrize("method,gradient_steps", [("draft", 3), ("draft-k", 2), ("draft-lv", 1), ("alignprop", None),
                                                   ("refl", 1)])
def test_each_method_trains_the_lora_and_logs(tmp_path, tiny_sd, method, gradient_steps):
    from diffusers import StableDiffusionPipeline

    trainer = trainer_for(reward_config(tmp_path, tiny_sd, f"reward.method={method}", "reward.k=2",
                                        "reward.aux_scorers=[shapes-checker]"))
    before = {k: v.clone() for k, v in trainable_state_dict(trainer.accelerator.unwrap_model(trainer.unet)).items()}
    final = trainer.train()
    after = trainable_state_dict(trainer.accelerator.unwrap_model(trainer.unet))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in rows if "reward" in row]
    assert [row["step"] for row in steps] == [1, 2] and all(row["grad_norm"] > 0 for row in steps)
    assert "aux/shapes-checker" in steps[0] and {"eval/shapes-clip", "eval/shapes-checker"} <= rows[0].keys()
    if gradient_steps is None:
        assert all(1 <= row["gradient_steps"] <= 2 for row in steps)
    else:
        assert all(row["gradient_steps"] == gradient_steps for row in steps)
    assert "eval/shapes-clip" in final and json.loads((tmp_path / "run" / "conventions.json").read_text())["window"]
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd)
    pipe.load_lora_weights(tmp_path / "run")  # the saved LoRA loads into a stock pipeline


def test_resume_reproduces_the_uninterrupted_run(tmp_path, tiny_sd):
    common = ["reward.method=alignprop", "reward.k=3", "sampling.eta=0.5", "train.max_steps=3", "prompts.held_out=''"]
    straight = trainer_for(reward_config(tmp_path / "a", tiny_sd, *common))
    straight.run_steps()
    first = trainer_for(reward_config(tmp_path / "b", tiny_sd, *common, "train.max_steps=2"))
    first.run_steps()
    first.save_checkpoint()
    resumed = trainer_for(reward_config(tmp_path / "b", tiny_sd, *common, "checkpoint.resume_from=latest"))
    assert resumed.global_step == 2
    resumed.run_steps()
    expected = trainable_state_dict(straight.accelerator.unwrap_model(straight.unet))
    actual = trainable_state_dict(resumed.accelerator.unwrap_model(resumed.unet))
    # the scorer caches each prompt's text features from the batch it first met them in, so a fresh process
    # differs from the uninterrupted one in the last float bits only
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-6)
    assert resumed.history[-1]["reward"] == pytest.approx(straight.history[-1]["reward"], rel=1e-5)



def test_a_logged_row_is_the_mean_over_the_steps_since_the_last_row(tmp_path, tiny_sd):
    common = ["reward.method=draft-k", "prompts.held_out=''"]
    every_step = trainer_for(reward_config(tmp_path / "a", tiny_sd, *common))
    every_step.run_steps()
    every_two = trainer_for(reward_config(tmp_path / "b", tiny_sd, *common, "logging.every=2"))
    every_two.run_steps()
    assert [row["step"] for row in every_two.history] == [2]
    assert every_two.history[0]["reward"] == pytest.approx(sum(r["reward"] for r in every_step.history) / 2, rel=1e-5)

def test_kl_to_the_reference_starts_at_zero_and_grows(tmp_path, tiny_sd):
    trainer = trainer_for(reward_config(tmp_path, tiny_sd, "reward.kl_weight=0.5", "reward.method=draft",
                                        "prompts.held_out=''"))
    trainer.run_steps()
    assert trainer.history[0]["kl"] == 0.0  # LoRA B starts at 0: policy = reference
    assert trainer.history[1]["kl"] > 0


def test_bad_reward_configs_are_clear_errors(tmp_path, tiny_sd):
    with pytest.raises(ConfigError, match="reward.k=5 exceeds sampling.num_inference_steps=3"):
        reward_config(tmp_path, tiny_sd, "reward.method=draft-k", "reward.k=5")
    with pytest.raises(ConfigError, match="reward.refl_steps must be"):
        reward_config(tmp_path, tiny_sd, "reward.method=refl", "reward.refl_steps=[2, 3]")
    with pytest.raises(ConfigError, match="prompts.train is required"):
        load_config(None, [f"model.pretrained={tiny_sd}"], cls=RewardRunConfig)
    with pytest.raises(ConfigError, match="has no differentiable path"):
        trainer_for(reward_config(tmp_path, tiny_sd, "reward.scorer=shapes-checker"))


def test_cli_and_script_train_draft(tmp_path, tiny_sd, capsys):
    import runpy
    import sys

    from diffalign.cli import main
    from diffalign.paths import ASSETS, asset

    common = [f"model.pretrained={tiny_sd}", "sampling.num_inference_steps=2", "train.batch_size=2", "train.max_steps=1",
              "prompts.held_out_limit=2", "reward.aux_scorers=[]", "logging.every=1", "checkpoint.every=0"]
    config = str(asset("configs", "tiny-draft.yaml"))
    assert main(["train", "draft", "--config", config, f"output_dir={tmp_path / 'cli'}", *common]) == 0
    assert (tmp_path / "cli" / "pytorch_lora_weights.safetensors").is_file()
    sys.argv = ["train_draft.py", "--config", config, f"output_dir={tmp_path / 'script'}", *common,
                "reward.method=refl"]
    runpy.run_path(str(ASSETS.parent / "scripts" / "train_draft.py"), run_name="__main__")
    assert "done:" in capsys.readouterr().out
    summary = json.loads((tmp_path / "script" / "summary.json").read_text())
    assert "predicted x0" in summary["conventions"]["window"] and "eval/shapes-clip" in summary["final"]


def test_benchmark_trajectory_script_runs(tmp_path, monkeypatch, capsys):
    import runpy
    import sys

    from diffalign.paths import ASSETS

    out = tmp_path / "bench.json"
    monkeypatch.setattr(sys, "argv", ["benchmark_trajectory.py", "--model", "tiny-sd", "--resolution", "16",
                                      "--sampling-steps", "2", "--k", "1,all", "--steps", "1", "--warmup", "0",
                                      "--attention", "sdpa,xformers", "--json", str(out)])
    runpy.run_path(str(ASSETS.parent / "scripts" / "benchmark_trajectory.py"), run_name="__main__")
    results = json.loads(out.read_text())["results"]
    assert [r["k"] for r in results] == ["1", "all", "1", "all"]
    assert all(r["seconds_per_step"] > 0 for r in results[:2])
    if not torch.cuda.is_available():
        assert all("xformers" in r["error"] for r in results[2:])


def test_full_fine_tune_saves_a_unet(tmp_path, tiny_sd):
    from diffusers import UNet2DConditionModel

    trainer = trainer_for(reward_config(tmp_path, tiny_sd, "lora.enabled=false", "train.max_steps=1",
                                        "train.learning_rate=1e-4", "reward.kl_weight=1.0", "prompts.held_out=''"))
    assert trainer.reference.unet is not trainer.accelerator.unwrap_model(trainer.unet)  # a frozen copy
    final = trainer.train()
    unet = UNet2DConditionModel.from_pretrained(final["weights"])
    base = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    assert any(not torch.equal(a, b) for a, b in zip(unet.state_dict().values(), base.state_dict().values()))
