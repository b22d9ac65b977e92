"""Diffusion-DPO training on tiny SD and SDXL-architecture pipelines (CPU, no network)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel

from conftest import TINY_PAIRS, tiny_config
from diffalign.models import unet_prediction
from diffalign.training import DPOTrainer, NonFiniteLossError
from diffalign.training.checkpoint import trainable_state_dict


def make_trainer(config) -> DPOTrainer:
    trainer = DPOTrainer(config)
    trainer.setup()
    return trainer


def fixed_batch(trainer: DPOTrainer, size: int = 8) -> dict:
    items = [trainer.dataset[i] for i in range(size)]
    return torch.utils.data.default_collate(items)


def loss_on(trainer: DPOTrainer, batch: dict, seed: int = 123) -> tuple[float, dict]:
    """DPO loss on a fixed batch with fixed noise and timesteps (the trainer's generator is restored)."""
    saved = trainer.noise_generator.get_state()
    trainer.noise_generator.manual_seed(seed)
    with torch.no_grad():
        loss, metrics = trainer.loss(trainer.to_pair_batch(batch))
    trainer.noise_generator.set_state(saved)
    return loss.item(), metrics


def render(pipeline, prompt: str = "a red circle") -> np.ndarray:
    pipeline.set_progress_bar_config(disable=True)
    return pipeline(prompt, num_inference_steps=4, height=64, width=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]


def test_implicit_reward_is_exactly_zero_at_step_zero_with_lora_reference(tmp_path, tiny_sd):
    trainer = make_trainer(tiny_config(tmp_path, tiny_sd))
    loss, metrics = loss_on(trainer, fixed_batch(trainer))
    assert metrics["implicit_reward"].item() == 0.0
    assert metrics["model_diff"].item() == metrics["ref_diff"].item()
    assert loss == pytest.approx(math.log(2.0), abs=1e-7)


@pytest.mark.parametrize("model", ["tiny_sd", "tiny_sdxl"])
def test_training_lowers_dpo_loss_and_lora_loads_into_stock_pipeline(tmp_path, model, request):
    model_dir = request.getfixturevalue(model)
    config = tiny_config(tmp_path, model_dir, "train.max_steps=5", "train.learning_rate=1e-3", "train.warmup_steps=0",
                         "train.batch_size=8", "cache.enabled=false")
    trainer = make_trainer(config)
    assert trainer.components.is_sdxl == (model == "tiny_sdxl")
    batch = fixed_batch(trainer)
    before, _ = loss_on(trainer, batch)
    for _ in range(10):  # the trainer's loss and optimizer on one fixed batch, noise and timesteps
        trainer.noise_generator.manual_seed(123)
        loss, _ = trainer.loss(trainer.to_pair_batch(batch))
        trainer.accelerator.backward(loss)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
    after, metrics = loss_on(trainer, batch)
    assert before == pytest.approx(math.log(2.0), abs=1e-6)
    assert after < before - 0.05
    assert metrics["implicit_acc"].item() > 0.5
    assert trainer.train()["step"] == 5

    pipeline_class = StableDiffusionXLPipeline if model == "tiny_sdxl" else StableDiffusionPipeline
    pipeline = pipeline_class.from_pretrained(model_dir)
    base_image = render(pipeline)
    pipeline.load_lora_weights(config.output_dir)
    lora_image = render(pipeline)
    assert np.abs(base_image - lora_image).max() > 1e-3
    trained = trainer.accelerator.unwrap_model(trainer.unet).eval()  # the loaded LoRA is the trained one, exactly
    lora_batch = trainer.to_pair_batch(batch)
    noisy, timesteps = lora_batch.latents_w, torch.full((8,), 500)
    with torch.no_grad():
        expected = unet_prediction(trained, noisy, timesteps, lora_batch.cond, lora_batch.time_ids_w)
        loaded = unet_prediction(pipeline.unet, noisy, timesteps, lora_batch.cond, lora_batch.time_ids_w)
    torch.testing.assert_close(loaded, expected, rtol=1e-5, atol=1e-5)
    card = (tmp_path / "run" / "README.md").read_text()
    assert "beta 5000.0" in card and "load_lora_weights" in card


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, tiny_sd):
    common = ["train.max_steps=6", "train.batch_size=2", "train.gradient_accumulation_steps=2",
              "checkpoint.every=2", "data.prompt_dropout=0.3", "data.random_flip=true", "cache.enabled=false",
              "data.center_crop=false", "train.lr_scheduler=linear", "train.warmup_steps=2"]
    straight = make_trainer(tiny_config(tmp_path / "a", tiny_sd, *common))
    straight.run_steps()
    expected = trainable_state_dict(straight.accelerator.unwrap_model(straight.unet))

    killed = make_trainer(tiny_config(tmp_path / "b", tiny_sd, *common))
    original_loss, calls = killed.loss, {"n": 0}

    def dies_in_step_five(batch):
        calls["n"] += 1
        if calls["n"] == 10:  # the second micro-batch of step 5, after checkpoint step-4
            raise KeyboardInterrupt("simulated kill")
        return original_loss(batch)

    killed.loss = dies_in_step_five
    with pytest.raises(KeyboardInterrupt):
        killed.run_steps()
    assert killed.checkpoints.checkpoints()[-1].name == "step-00000004"

    resumed = make_trainer(tiny_config(tmp_path / "b", tiny_sd, *common, "checkpoint.resume_from=latest"))
    assert resumed.global_step == 4
    resumed.run_steps()
    actual = trainable_state_dict(resumed.accelerator.unwrap_model(resumed.unet))
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    assert [row["loss"] for row in resumed.history] == [row["loss"] for row in straight.history]


def gradients(trainer: DPOTrainer, batch: dict, seed: int = 7) -> dict[str, torch.Tensor]:
    trainer.noise_generator.manual_seed(seed)
    loss, _ = trainer.loss(trainer.to_pair_batch(batch))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.accelerator.unwrap_model(trainer.unet).named_parameters()
             if p.requires_grad}
    trainer.optimizer.zero_grad()
    return grads


def test_training_from_cache_equals_training_from_images(tmp_path, tiny_sdxl):
    common = ["train.max_steps=3", "train.batch_size=4", "cache.dtype=float32", "cache.batch_size=3",
              "cache.shard_size=5"]
    from_images = make_trainer(tiny_config(tmp_path / "images", tiny_sdxl, *common, "cache.enabled=false"))
    from_cache = make_trainer(tiny_config(tmp_path / "cache", tiny_sdxl, *common, "cache.enabled=true"))
    rows = [0, 5, 13, 23]
    batch_images = torch.utils.data.default_collate([from_images.dataset[i] for i in rows])
    batch_cache = torch.utils.data.default_collate([from_cache.dataset[i] for i in rows])
    a, b = from_images.to_pair_batch(batch_images), from_cache.to_pair_batch(batch_cache)
    assert torch.equal(a.latents_w, b.latents_w) and torch.equal(a.latents_l, b.latents_l)
    assert torch.equal(a.time_ids_w, b.time_ids_w) and torch.equal(a.time_ids_l, b.time_ids_l)
    assert torch.allclose(a.cond.prompt_embeds, b.cond.prompt_embeds, atol=1e-6)
    assert torch.allclose(a.cond.pooled, b.cond.pooled, atol=1e-6)  # text encoder batch composition only
    grads_images, grads_cache = gradients(from_images, batch_images), gradients(from_cache, batch_cache)
    for name, grad in grads_images.items():  # beta=5000 amplifies the 1e-7 text differences
        assert (grad - grads_cache[name]).norm() <= 1e-3 * grad.norm(), name
    assert sum(g.abs().sum() for g in grads_images.values()) > 0


def test_cache_build_resumes_and_is_reused(tmp_path, tiny_sd):
    config = tiny_config(tmp_path, tiny_sd, "cache.enabled=true", "cache.shard_size=5")
    first = make_trainer(config)
    folder = first.dataset.folder
    shards = sorted((folder / "shards").iterdir())
    assert len(shards) == 5 and len(first.dataset) == 24
    shards[-1].unlink()
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(dict(manifest, complete=False)))
    kept = shards[0].stat().st_mtime_ns
    second = make_trainer(config)
    assert second.dataset.folder == folder
    assert (folder / "shards" / shards[-1].name).is_file()
    assert shards[0].stat().st_mtime_ns == kept
    other = make_trainer(tiny_config(tmp_path, tiny_sd, "cache.enabled=true", "data.resolution=32"))
    assert other.dataset.folder != folder


def test_non_finite_loss_saves_last_good_state_and_stops(tmp_path, tiny_sd):
    trainer = make_trainer(tiny_config(tmp_path, tiny_sd, "train.max_steps=5"))
    original_loss, calls = trainer.loss, {"n": 0}

    def nan_on_third(batch):
        calls["n"] += 1
        loss, metrics = original_loss(batch)
        return (loss * float("nan") if calls["n"] == 3 else loss), metrics

    trainer.loss = nan_on_third
    with pytest.raises(NonFiniteLossError, match=r"step 3.*last good state \(step 2\)"):
        trainer.run_steps()
    saved = trainer.checkpoints.checkpoints()[-1]
    assert saved.name == "step-00000002"
    good = trainable_state_dict(trainer.accelerator.unwrap_model(trainer.unet))
    resumed = make_trainer(tiny_config(tmp_path, tiny_sd, "train.max_steps=5", f"checkpoint.resume_from={saved}"))
    restored = trainable_state_dict(resumed.accelerator.unwrap_model(resumed.unet))
    assert all(torch.equal(good[k], restored[k]) for k in good)


def test_checkpoints_keep_last_and_ignore_partial_saves(tmp_path, tiny_sd):
    trainer = make_trainer(tiny_config(tmp_path, tiny_sd, "train.max_steps=6", "checkpoint.every=1",
                                       "checkpoint.keep_last=2"))
    trainer.run_steps()
    names = [p.name for p in trainer.checkpoints.checkpoints()]
    assert names == ["step-00000005", "step-00000006"]
    partial = trainer.checkpoints.root / ".tmp-step-00000007"
    partial.mkdir()
    assert trainer.checkpoints.resolve("latest").name == "step-00000006"


def test_full_fine_tune_with_frozen_reference_and_v_prediction(tmp_path, tiny_sd):
    config = tiny_config(tmp_path, tiny_sd, "lora.enabled=false", "train.max_steps=3", "train.learning_rate=1e-4",
                         "model.prediction_type=v_prediction", "train.optimizer=adafactor")
    trainer = make_trainer(config)
    assert trainer.components.noise_scheduler.config.prediction_type == "v_prediction"
    _, metrics = loss_on(trainer, fixed_batch(trainer))
    assert metrics["implicit_reward"].item() == 0.0
    trainer.train()
    reference = trainer.reference.unet
    assert not any(p.requires_grad for p in reference.parameters())
    saved = UNet2DConditionModel.from_pretrained(tmp_path / "run" / "unet")
    changed = any(not torch.equal(a, b) for a, b in zip(saved.state_dict().values(), reference.state_dict().values()))
    assert changed


def test_sft_objective_and_gradient_accumulation(tmp_path, tiny_sd):
    config = tiny_config(tmp_path, tiny_sd, "train.objective=sft", "train.max_steps=2", "train.batch_size=2",
                         "train.total_batch_size=6")
    trainer = make_trainer(config)
    assert trainer.gradient_accumulation == 3 and trainer.total_batch_size == 6
    final = trainer.train()
    assert "mse_w" in final and "implicit_acc" not in final
    assert trainer.accelerator.step == 6


def test_validation_images_and_tensorboard_logs(tmp_path, tiny_sd):
    config = tiny_config(tmp_path, tiny_sd, "train.max_steps=2", "logging.tracker=tensorboard",
                         "validation.prompts=[a red circle]", "validation.seeds=[0, 1]", "validation.every=1",
                         "validation.num_inference_steps=2")
    make_trainer(config).train()
    run = tmp_path / "run"
    assert (run / "validation" / "step-00000002.png").is_file()
    assert any((run / "logs").rglob("events.out.tfevents.*"))
    assert json.loads((run / "summary.json").read_text())["data"]["ties_dropped"] == 2
    assert (run / "conventions.json").is_file()


def test_streaming_pickapic_parquet_trains_and_resumes(tmp_path, tiny_sd):
    import datasets

    rows = [json.loads(line) for line in TINY_PAIRS.read_text().splitlines()]
    folder = TINY_PAIRS.parent
    table = {"caption": [r["caption"] for r in rows], "label_0": [r["label_0"] for r in rows],
             "jpg_0": [(folder / r["image_0"]).read_bytes() for r in rows],
             "jpg_1": [(folder / r["image_1"]).read_bytes() for r in rows]}
    (tmp_path / "pickapic").mkdir()
    datasets.Dataset.from_dict(table).to_parquet(str(tmp_path / "pickapic" / "train-00000.parquet"))
    common = ["data.format=pickapic", f"data.path={tmp_path / 'pickapic'}", "data.streaming=true",
              "cache.enabled=false", "train.batch_size=4", "checkpoint.every=2"]
    first = make_trainer(tiny_config(tmp_path, tiny_sd, *common, "train.max_steps=2"))
    first.train()
    resumed = make_trainer(tiny_config(tmp_path, tiny_sd, *common, "train.max_steps=4", "checkpoint.resume_from=latest"))
    assert resumed.global_step == 2
    assert resumed.train()["step"] == 4


def test_cache_key_follows_the_data_content_not_only_its_path(tmp_path, tiny_sd):
    from conftest import TINY_PAIRS

    rows = [json.loads(line) for line in TINY_PAIRS.read_text().splitlines() if line.strip()]
    for row in rows:
        row["image_0"], row["image_1"] = (str(TINY_PAIRS.parent / row[key]) for key in ("image_0", "image_1"))
    pairs = tmp_path / "pairs.jsonl"
    decided = [row for row in rows if row["label_0"] != 0.5]
    pairs.write_text("".join(json.dumps(row) + "\n" for row in decided[:10]))
    config = tiny_config(tmp_path, tiny_sd, "cache.enabled=true", f"data.path={pairs}")
    first = make_trainer(config)
    pairs.write_text("".join(json.dumps(row) + "\n" for row in decided[:6]))
    second = make_trainer(config)
    assert len(first.dataset) == 10 and len(second.dataset) == 6
    assert second.dataset.folder != first.dataset.folder


def test_min_timestep_restricts_the_training_timesteps(tmp_path, tiny_sd):
    trainer = make_trainer(tiny_config(tmp_path, tiny_sd, "train.min_timestep=900"))
    seen = []
    add_noise = trainer.components.noise_scheduler.add_noise
    trainer.components.noise_scheduler.add_noise = lambda x, n, t: seen.append(t) or add_noise(x, n, t)
    for seed in range(4):
        loss_on(trainer, fixed_batch(trainer), seed=seed)
    timesteps = torch.cat(seen)
    assert timesteps.min().item() >= 900 and timesteps.max().item() <= 999
    assert "uniform over [900, T)" in json.dumps(trainer.describe())


def test_min_timestep_beyond_the_schedule_is_a_clear_error(tmp_path, tiny_sd):
    from diffalign.config import ConfigError

    with pytest.raises(ConfigError, match="min_timestep=1000 leaves no timestep.*1000 training timesteps"):
        make_trainer(tiny_config(tmp_path, tiny_sd, "train.min_timestep=1000"))


def test_a_logged_row_is_the_mean_over_the_steps_since_the_last_row(tmp_path, tiny_sd):
    common = ["train.max_steps=4", "train.batch_size=2", "cache.enabled=false"]
    every_step = make_trainer(tiny_config(tmp_path / "a", tiny_sd, *common))
    every_step.run_steps()
    every_two = make_trainer(tiny_config(tmp_path / "b", tiny_sd, *common, "logging.every=2"))
    every_two.run_steps()
    assert [row["step"] for row in every_two.history] == [2, 4]
    for row, first, second in zip(every_two.history, every_step.history[::2], every_step.history[1::2]):
        assert row["loss"] == pytest.approx((first["loss"] + second["loss"]) / 2, rel=1e-6)
