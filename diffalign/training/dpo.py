"""Diffusion-DPO (and the SFT-on-winners baseline) training on accelerate.

One optimizer step = ``gradient_accumulation`` micro-batches of ``train.batch_size`` pairs on each
process. Per micro-batch: latents of winners and losers (from the VAE, or from the cache), one
noise tensor and one timestep per pair shared by both images, the policy's and the reference's
per-sample errors, and :func:`diffalign.losses.diffusion_dpo_loss`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from diffalign.config import ConfigError, DPORunConfig, conventions, to_dict
from diffalign.losses import diffusion_dpo_loss, per_sample_mse, prediction_target, ranked_dpo_loss, sft_loss
from diffalign.models import (DTYPES, Components, PromptEmbeds, Reference, add_lora, encode_images,
                              encode_prompts, freeze_and_cast, load_components, resolve_attention_backend,
                              set_attention_backend, unet_prediction)
from diffalign.training.checkpoint import (CheckpointManager, generator_state, register_trainable_hooks,
                                           set_generator_state)
from diffalign.training.optim import build_lr_scheduler, build_optimizer
from diffalign.training.outputs import (render_validation, save_final_weights, write_model_card,
                                        write_run_config)
from diffalign.training.sampler import EpochIndexed, ResumableBatchSampler

logger = logging.getLogger(__name__)

REFERENCE_FILE = "reference.safetensors"  # in a checkpoint: the refreshed reference (Curriculum DPO)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good state was saved as a checkpoint first."""


@dataclass
class PairBatch:
    """One micro-batch on the device: latents [B, C, h, w] (float32), conditioning, SDXL time ids [B, 6]."""

    latents_w: torch.Tensor
    latents_l: torch.Tensor
    cond: PromptEmbeds
    time_ids_w: torch.Tensor | None
    time_ids_l: torch.Tensor | None


@dataclass
class GroupBatch:
    """One micro-batch of ranked records: latents [B, K, C, h, w] (float32, zeros where padded), labels [B, K],
    mask [B, K] bool, conditioning per record, SDXL time ids [B, K, 6] (None for SD)."""

    latents: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor
    cond: PromptEmbeds
    time_ids: torch.Tensor | None


def _flat(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


class DPOTrainer:
    """Composes components, data, loss, optimizer and checkpoints into one training run."""

    def __init__(self, config: DPORunConfig):
        self.config = config
        self.gradient_accumulation = config.gradient_accumulation(PartialState().num_processes)
        tracker = None if config.logging.tracker == "none" else config.logging.tracker
        self.accelerator = Accelerator(
            mixed_precision="no" if config.model.mixed_precision == "fp32" else config.model.mixed_precision,
            log_with=tracker,
            gradient_accumulation_steps=self.gradient_accumulation,
            project_config=ProjectConfiguration(project_dir=config.output_dir,
                                                logging_dir=str(Path(config.output_dir) / "logs")))
        self.checkpoints = CheckpointManager(config.output_dir, config.checkpoint.keep_last)
        self.global_step = 0
        self.history: list[dict] = []
        self.curriculum = None  # curriculum stages (diffalign.data.curriculum.Stage), when curriculum.stages > 0

    # Set-up --------------------------------------------------------------------------------------

    def setup(self, components: Components | None = None) -> None:
        """Load (or take already loaded) components, data, optimizer; resume if asked."""
        config, accelerator = self.config, self.accelerator
        device = accelerator.device
        self.weight_dtype = DTYPES[config.model.mixed_precision]
        vae_dtype = self.weight_dtype if config.model.vae_dtype == "weight" else DTYPES[config.model.vae_dtype]
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        set_seed(config.train.seed)
        components = components if components is not None else load_components(config.model)
        steps = components.noise_scheduler.config.num_train_timesteps
        if config.train.min_timestep >= steps:
            raise ConfigError(f"train.min_timestep={config.train.min_timestep} leaves no timestep: the scheduler of "
                              f"{config.model.pretrained} has {steps} training timesteps (0..{steps - 1}).")
        freeze_and_cast(components, self.weight_dtype, vae_dtype)
        self.components = components
        self.attention = resolve_attention_backend(config.model.attention, device)
        set_attention_backend(components.unet, self.attention)
        unet = components.unet
        if config.model.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        if config.lora.enabled:
            if unet.dtype != self.weight_dtype:
                unet.to(dtype=self.weight_dtype)
            params = add_lora(unet, config.lora)
        else:
            unet.requires_grad_(True)
            params = list(unet.parameters())
        unet.train()
        self.reference = Reference(unet, use_lora=config.lora.enabled, weight_dtype=self.weight_dtype)
        if not config.lora.enabled:
            self.reference.unet.to(device)
        self.trainable_params = params
        self.data_stats, dataset = self._dataset()
        self.dataset = dataset
        world = accelerator.num_processes
        self.total_batch_size = config.train.batch_size * self.gradient_accumulation * world
        learning_rate = config.train.learning_rate * (self.total_batch_size if config.train.scale_lr else 1)
        optimizer = build_optimizer(config.train, params, learning_rate)
        lr_scheduler = build_lr_scheduler(config.train, optimizer, world)
        self.unet, self.optimizer, self.lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
        register_trainable_hooks(accelerator, lambda: accelerator.unwrap_model(self.unet))
        self._move_frozen(device if not config.cache.enabled else torch.device("cpu"))
        self.noise_generator = torch.Generator().manual_seed(config.train.seed * 7919 + accelerator.process_index)
        self.uncond = None
        if config.data.prompt_dropout > 0:
            uncond = encode_prompts(components, [""], components.vae.device)
            self.uncond = PromptEmbeds(uncond.prompt_embeds.to(device),
                                       None if uncond.pooled is None else uncond.pooled.to(device))
        self._resume()

    def _move_frozen(self, device: torch.device) -> None:
        """VAE and text encoders: on the device when training from images; on the CPU (off the
        accelerator's memory) when training from the cache, except while rendering validation images."""
        for module in [*self.components.text_encoders, self.components.vae]:
            module.to(device)

    def _dataset(self):
        from diffalign.data import build_pair_dataset

        config = self.config
        if config.data.format == "ranked":
            from diffalign.data.ranked import RankedDataset, read_ranked_jsonl
            from diffalign.data.transforms import PairTransform

            records = read_ranked_jsonl(config.data.path)[:config.data.max_pairs]
            transform = PairTransform(config.data.resolution, config.data.center_crop, config.data.random_flip)
            dataset = RankedDataset(records, transform, seed=config.train.seed)
            labelled = sum(int(a > b) for labels in dataset.labels for a in labels for b in labels)
            stats = {"records": len(records), "images": sum(r.k for r in records), "labelled_pairs": labelled}
            if config.cache.enabled:
                from diffalign.data.cache import build_cache

                dataset = build_cache(dataset, self.components, config, self.accelerator)
            return stats, dataset
        dataset, stats = build_pair_dataset(config.data, seed=config.train.seed)
        stats = {k: v for k, v in vars(stats).items() if v is not None}
        if config.curriculum.stages:
            from diffalign.data.curriculum import curriculum_stages

            if "gap" not in dataset.table.column_names:
                raise ConfigError(f"curriculum.stages={config.curriculum.stages} needs a 'gap' (difficulty: score or "
                                  f"rank gap, larger = easier) on every pair of {config.data.path}.")
            self.curriculum = curriculum_stages(dataset.table["gap"], config.curriculum.stages, config.curriculum.mode)
        if config.cache.enabled:
            from diffalign.data.cache import build_cache

            dataset = build_cache(dataset, self.components, config, self.accelerator)
        return stats, dataset

    def _resume(self) -> None:
        path = self.checkpoints.resolve(self.config.checkpoint.resume_from)
        if path is None:
            if self.config.checkpoint.resume_from == "latest":
                logger.info("checkpoint.resume_from=latest but no checkpoint exists yet: starting fresh.")
            return
        self.accelerator.load_state(str(path))
        state = self.checkpoints.read_state(path)
        self.global_step = state["global_step"]
        set_generator_state(self.noise_generator, state["noise_generator"])
        if state.get("reference_step") is not None:
            from safetensors.torch import load_file

            self.reference.load_state_dict(load_file(str(path / REFERENCE_FILE)), state["reference_step"])
        self.accelerator.step = self.global_step * self.gradient_accumulation
        self.history = [row for row in self._read_history() if row["step"] <= self.global_step]
        logger.info("resumed from %s at step %d", path, self.global_step)

    def _read_history(self) -> list[dict]:
        path = Path(self.config.output_dir) / "metrics.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def _batches(self):
        """Endless iterator of collated micro-batches for this process, starting at the resume position."""
        config, accelerator = self.config, self.accelerator
        start = self.global_step * self.gradient_accumulation
        if isinstance(self.dataset, torch.utils.data.IterableDataset):
            yield from self._streamed_batches(start)
            return
        if self.curriculum:
            from diffalign.data.curriculum import CurriculumBatchSampler

            sampler = CurriculumBatchSampler(self.curriculum, config.curriculum.steps_per_stage * self.gradient_accumulation,
                                             config.train.batch_size, config.train.seed, accelerator.process_index,
                                             accelerator.num_processes, start=start)
        else:
            sampler = ResumableBatchSampler(len(self.dataset), config.train.batch_size, config.train.seed,
                                            accelerator.process_index, accelerator.num_processes, start=start)
        loader = torch.utils.data.DataLoader(EpochIndexed(self.dataset), batch_sampler=sampler,
                                             num_workers=config.data.num_workers,
                                             persistent_workers=config.data.num_workers > 0)
        yield from loader

    def _streamed_batches(self, start: int):
        """Streaming data: every process reads the stream in order and keeps its slice of each global
        batch (so processes see disjoint pairs); on resume the first ``start`` global batches are skipped."""
        config, accelerator = self.config, self.accelerator
        size, rank = config.train.batch_size, accelerator.process_index
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=size * accelerator.num_processes,
                                             num_workers=config.data.num_workers, drop_last=True)
        position = 0
        while True:
            for batch in loader:
                if position >= start:
                    yield {key: value[rank * size:(rank + 1) * size] for key, value in batch.items()}
                position += 1

    # One micro-batch -------------------------------------------------------------------------------

    def _drop_prompts(self, cond: PromptEmbeds, rows: int) -> PromptEmbeds:
        """Replace each row's conditioning by the empty prompt's with probability data.prompt_dropout."""
        if self.uncond is None:
            return cond
        drop = torch.rand(rows, generator=self.noise_generator) < self.config.data.prompt_dropout
        if not drop.any():
            return cond
        drop = drop.to(cond.prompt_embeds.device)
        embeds = torch.where(drop[:, None, None], self.uncond.prompt_embeds.to(cond.prompt_embeds.dtype),
                             cond.prompt_embeds)
        pooled = None if cond.pooled is None else torch.where(drop[:, None], self.uncond.pooled.to(cond.pooled.dtype),
                                                              cond.pooled)
        return PromptEmbeds(embeds, pooled)

    def to_group_batch(self, batch: dict) -> GroupBatch:
        """Encode (or take from the cache) the valid images of ranked records (padding stays zero) and
        their captions."""
        device = self.accelerator.device
        mask = batch["mask"].to(device)
        if "latents" in batch:
            latents = batch["latents"].to(device).float()
            pooled = batch.get("pooled")
            cond = PromptEmbeds(batch["prompt_embeds"].to(device, self.weight_dtype),
                                None if pooled is None else pooled.to(device, self.weight_dtype))
        else:
            encoded = encode_images(self.components.vae, batch["pixel_values"].to(device)[mask])
            latents = encoded.new_zeros(*mask.shape, *encoded.shape[1:])
            latents[mask] = encoded
            cond = encode_prompts(self.components, list(batch["caption"]), device)
        cond = self._drop_prompts(cond, mask.shape[0])
        time_ids = batch["time_ids"].to(device, cond.prompt_embeds.dtype) if self.components.is_sdxl else None
        return GroupBatch(latents, batch["labels"].to(device), mask, cond, time_ids)

    def to_pair_batch(self, batch: dict) -> PairBatch | GroupBatch:
        """Encode (or take from the cache) latents and text conditioning, then apply prompt dropout."""
        if "mask" in batch:
            return self.to_group_batch(batch)
        device = self.accelerator.device
        if "latents_w" in batch:
            latents_w, latents_l = batch["latents_w"].to(device).float(), batch["latents_l"].to(device).float()
            pooled = batch.get("pooled")
            cond = PromptEmbeds(batch["prompt_embeds"].to(device, self.weight_dtype),
                                None if pooled is None else pooled.to(device, self.weight_dtype))
        else:
            vae = self.components.vae
            latents = encode_images(vae, torch.cat([batch["pixel_values_w"], batch["pixel_values_l"]]))
            latents_w, latents_l = latents.chunk(2)
            cond = encode_prompts(self.components, list(batch["caption"]), device)
        cond = self._drop_prompts(cond, latents_w.shape[0])
        time_ids_w = time_ids_l = None
        if self.components.is_sdxl:
            time_ids_w = batch["time_ids_w"].to(device, cond.prompt_embeds.dtype)
            time_ids_l = batch["time_ids_l"].to(device, cond.prompt_embeds.dtype)
        return PairBatch(latents_w, latents_l, cond, time_ids_w, time_ids_l)

    def ranked_loss(self, batch: GroupBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Ranked DPO on one micro-batch: the K images of a record share one noise and one timestep; the
        valid images go through the UNet ``ranked.unet_micro_batch`` at a time."""
        config, scheduler = self.config, self.components.noise_scheduler
        device = self.accelerator.device
        records = batch.mask.shape[0]
        noise = torch.randn((records, *batch.latents.shape[2:]), generator=self.noise_generator).to(device)
        timesteps = torch.randint(config.train.min_timestep, scheduler.config.num_train_timesteps, (records,),
                                  generator=self.noise_generator).to(device)
        rows, columns = batch.mask.nonzero(as_tuple=True)
        latents, noise, timesteps = batch.latents[rows, columns], noise[rows], timesteps[rows]
        cond = PromptEmbeds(batch.cond.prompt_embeds[rows], None if batch.cond.pooled is None else batch.cond.pooled[rows])
        time_ids = None if batch.time_ids is None else batch.time_ids[rows, columns]
        noisy = scheduler.add_noise(latents, noise, timesteps)
        target = prediction_target(scheduler.config.prediction_type, noise, latents, timesteps, scheduler.alphas_cumprod)
        size = config.ranked.unet_micro_batch or len(rows)

        def errors(unet) -> torch.Tensor:
            chunks = []
            for start in range(0, len(rows), size):
                part = slice(start, start + size)
                part_cond = PromptEmbeds(cond.prompt_embeds[part], None if cond.pooled is None else cond.pooled[part])
                with self.accelerator.autocast():
                    prediction = unet_prediction(unet, noisy[part], timesteps[part], part_cond,
                                                 None if time_ids is None else time_ids[part])
                chunks.append(per_sample_mse(prediction, target[part]))
            grid = torch.zeros(batch.mask.shape, device=device)
            return grid.index_put((rows, columns), torch.cat(chunks))

        model_err = errors(self.unet)
        with torch.no_grad(), self.reference.active() as reference:
            ref_err = errors(reference)
        out = ranked_dpo_loss(model_err, ref_err, batch.labels, batch.mask, config.train.beta,
                              config.ranked.weighting, config.ranked.rank_source, config.train.positive_lambda)
        implicit = (model_err - ref_err).detach()[batch.mask]
        return out.loss, {"loss": out.loss.detach(), "implicit_acc": out.implicit_accuracy,
                          "labelled_pairs": torch.tensor(float(out.pairs)), "implicit_score": implicit.mean(),
                          "mse": model_err.detach()[batch.mask].mean(), "ref_mse": ref_err[batch.mask].mean()}

    def loss(self, batch: PairBatch | GroupBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and detached metrics of one micro-batch (shared noise and timestep within a pair)."""
        if isinstance(batch, GroupBatch):
            return self.ranked_loss(batch)
        config, scheduler = self.config, self.components.noise_scheduler
        device = self.accelerator.device
        pairs = batch.latents_w.shape[0]
        noise = torch.randn(batch.latents_w.shape, generator=self.noise_generator).to(device)
        timesteps = torch.randint(config.train.min_timestep, scheduler.config.num_train_timesteps, (pairs,),
                                  generator=self.noise_generator)
        timesteps = timesteps.to(device)
        sft = config.train.objective == "sft"
        latents = batch.latents_w if sft else torch.cat([batch.latents_w, batch.latents_l])
        repeat = 1 if sft else 2
        noise, timesteps = noise.repeat(repeat, 1, 1, 1), timesteps.repeat(repeat)
        cond = PromptEmbeds(batch.cond.prompt_embeds.repeat(repeat, 1, 1),
                            None if batch.cond.pooled is None else batch.cond.pooled.repeat(repeat, 1))
        time_ids = None if batch.time_ids_w is None else (
            batch.time_ids_w if sft else torch.cat([batch.time_ids_w, batch.time_ids_l]))
        noisy = scheduler.add_noise(latents, noise, timesteps)
        target = prediction_target(scheduler.config.prediction_type, noise, latents, timesteps, scheduler.alphas_cumprod)
        with self.accelerator.autocast():
            errors = per_sample_mse(unet_prediction(self.unet, noisy, timesteps, cond, time_ids), target)
        if sft:
            loss = sft_loss(errors)
            return loss, {"loss": loss.detach(), "mse_w": errors.detach().mean()}
        with torch.no_grad(), self.reference.active() as reference, self.accelerator.autocast():
            ref_errors = per_sample_mse(unet_prediction(reference, noisy, timesteps, cond, time_ids), target)
        err_w, err_l = errors.chunk(2)
        ref_w, ref_l = ref_errors.chunk(2)
        out = diffusion_dpo_loss(err_w, err_l, ref_w, ref_l, config.train.beta, config.train.positive_lambda)
        metrics = {"loss": out.loss.detach(), "implicit_acc": out.implicit_accuracy,
                   "model_diff": out.model_diff.mean(), "ref_diff": out.ref_diff.mean(),
                   "implicit_reward": out.logits.mean(),
                   "mse_w": err_w.detach().mean(), "mse_l": err_l.detach().mean(),
                   "ref_mse_w": ref_w.mean(), "ref_mse_l": ref_l.mean()}
        return out.loss, metrics

    # The loop --------------------------------------------------------------------------------------

    def _checkpoint_state(self) -> dict:
        return {"noise_generator": generator_state(self.noise_generator), "reference_step": self.reference.source_step}

    def _save_checkpoint(self) -> Path:
        self.accelerator.step = self.global_step * self.gradient_accumulation
        refreshed = self.reference.source_step is not None
        files = {REFERENCE_FILE: self.reference.state_dict()} if refreshed and self.accelerator.is_main_process else None
        return self.checkpoints.save(self.accelerator, self.global_step, self._checkpoint_state(), files)

    def train(self) -> dict:
        """Run to ``train.max_steps``, save the final weights and model card; returns the final metrics."""
        config, accelerator = self.config, self.accelerator
        if accelerator.is_main_process:
            write_run_config(config)
        if accelerator.log_with:
            accelerator.init_trackers(config.logging.project, config=_flat(to_dict(config)))
        accelerator.print(self.describe())
        self.run_steps()
        return self._finish()

    def run_steps(self) -> None:
        """The optimisation loop from the current step to ``train.max_steps`` (logging, checkpoints, validation)."""
        config, accelerator = self.config, self.accelerator
        batches = self._batches()
        progress = tqdm(range(config.train.max_steps), initial=self.global_step, desc="DPO steps",
                        disable=not accelerator.is_local_main_process)
        window: list[dict[str, torch.Tensor]] = []
        window_steps, window_start = 0, time.perf_counter()
        stage = None
        while self.global_step < config.train.max_steps:
            if self.curriculum and stage != self.curriculum_stage(self.global_step):
                stage = self.curriculum_stage(self.global_step)
                accelerator.print(f"curriculum stage {json.dumps(self.curriculum[stage].describe())} "
                                  f"from step {self.global_step}")
                if config.curriculum.refresh_reference and stage > 0:
                    self._stage_reference(stage)
                stage_metrics = {f"curriculum_{key}": torch.tensor(float(value))
                                 for key, value in self.curriculum[stage].describe().items()}
            for _ in range(self.gradient_accumulation):
                batch = self.to_pair_batch(next(batches))
                with accelerator.accumulate(self.unet):
                    loss, metrics = self.loss(batch)
                    finite = accelerator.reduce(torch.isfinite(loss.detach()).float(), reduction="mean")
                    if finite.item() < 1.0:
                        self._stop_on_non_finite(loss)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        grad_norm = self._clip_gradients()
                        metrics["grad_norm"] = grad_norm
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                if self.curriculum:
                    metrics.update(stage_metrics)
                window.append(metrics)
            self.global_step += 1
            window_steps += 1
            progress.update(1)
            if self.global_step % config.logging.every == 0 or self.global_step == config.train.max_steps:
                row = self._log(window, window_steps, time.perf_counter() - window_start)
                progress.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row.get('implicit_acc', float('nan')):.2f}")
                window, window_steps, window_start = [], 0, time.perf_counter()
            if config.checkpoint.every and self.global_step % config.checkpoint.every == 0:
                self._save_checkpoint()
            if config.validation.prompts and config.validation.every and self.global_step % config.validation.every == 0:
                self._validate()
        progress.close()

    def _stage_reference(self, stage: int) -> None:
        """Curry-DPO: the model at the stage's first step is the stage's reference. Entering the stage
        at that step refreshes it; a run resumed inside the stage has it from the checkpoint."""
        first_step = stage * self.config.curriculum.steps_per_stage
        if self.global_step == first_step:
            self.reference.refresh(self.accelerator.unwrap_model(self.unet), first_step)
            self.accelerator.print(f"reference refreshed: the model at step {first_step} is the reference of "
                                   f"stage {stage}")
        elif self.reference.source_step != first_step:
            raise RuntimeError(f"resuming at step {self.global_step} inside curriculum stage {stage}, whose reference "
                               f"is the model at step {first_step}, but the checkpoint holds the reference of step "
                               f"{self.reference.source_step} (was it written with curriculum.refresh_reference off?)")

    def curriculum_stage(self, step: int) -> int:
        """The curriculum stage of optimizer step ``step`` (0-based)."""
        from diffalign.data.curriculum import stage_index

        return stage_index(step, self.config.curriculum.steps_per_stage, len(self.curriculum))

    def _clip_gradients(self) -> torch.Tensor:
        max_norm = self.config.train.max_grad_norm if self.config.train.max_grad_norm > 0 else math.inf
        norm = self.accelerator.clip_grad_norm_(self.trainable_params, max_norm)
        return torch.as_tensor(norm if norm is not None else float("nan")).detach().float()

    def _stop_on_non_finite(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        path = self._save_checkpoint()
        raise NonFiniteLossError(
            f"Non-finite loss ({loss.item()}) at optimizer step {self.global_step + 1}. The last good state "
            f"(step {self.global_step}) was saved to {path}; resume with checkpoint.resume_from={path}. "
            "Usual causes: learning rate too high, fp16 overflow (try model.mixed_precision=bf16), "
            "SDXL VAE in half precision (model.vae_dtype=float32 or the fp16-fix VAE).")

    def _log(self, window: list[dict[str, torch.Tensor]], steps: int, elapsed: float) -> dict:
        """One row: each metric's mean over the ``steps`` optimizer steps since the last row."""
        accelerator = self.accelerator
        keys = window[0].keys() | {k for m in window for k in m}
        row: dict = {"step": self.global_step}
        for key in sorted(keys):
            values = torch.stack([m[key].float() for m in window if key in m]).mean()
            row[key] = accelerator.reduce(values.to(accelerator.device), reduction="mean").item()
        row["lr"] = self.lr_scheduler.get_last_lr()[0]
        row["pairs_per_s"] = steps * self.total_batch_size / max(elapsed, 1e-9)
        if torch.cuda.is_available():
            row["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        self.history.append(row)
        if accelerator.is_main_process:
            with (Path(self.config.output_dir) / "metrics.jsonl").open("a") as handle:
                handle.write(json.dumps(row) + "\n")
        if accelerator.log_with:
            accelerator.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=self.global_step)
        return row

    def _validate(self) -> None:
        if not self.accelerator.is_main_process:
            self.accelerator.wait_for_everyone()
            return
        unet = self.accelerator.unwrap_model(self.unet)
        unet.eval()
        self._move_frozen(self.accelerator.device)
        grid = render_validation(self.components, unet, self.config, self.accelerator.autocast)
        if self.config.cache.enabled:
            self._move_frozen(torch.device("cpu"))
        unet.train()
        folder = Path(self.config.output_dir) / "validation"
        folder.mkdir(parents=True, exist_ok=True)
        grid.save(folder / f"step-{self.global_step:08d}.png")
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                import numpy as np

                tracker.writer.add_image("validation", np.asarray(grid), self.global_step, dataformats="HWC")
        self.accelerator.wait_for_everyone()

    def _finish(self) -> dict:
        config, accelerator = self.config, self.accelerator
        if not config.checkpoint.every or self.global_step % config.checkpoint.every:
            self._save_checkpoint()
        if config.validation.prompts:
            self._validate()
        accelerator.wait_for_everyone()
        final = dict(self.history[-1]) if self.history else {}
        if accelerator.is_main_process:
            unet = accelerator.unwrap_model(self.unet)
            weights = save_final_weights(self.components, unet, config)
            write_model_card(config, self.components, self.data_stats, final)
            final["weights"] = str(weights)
            (Path(config.output_dir) / "summary.json").write_text(json.dumps(
                {"final": final, "data": self.data_stats, "attention": self.attention,
                 "conventions": conventions(config)}, indent=2))
        accelerator.end_training()
        return final

    def describe(self) -> str:
        config = self.config
        unit = "records" if config.train.objective == "rank" else "pairs"
        lines = [
            f"diffalign {config.train.objective.upper()} on {config.model.pretrained} "
            f"({'SDXL' if self.components.is_sdxl else 'SD'}), "
            f"{'LoRA r=' + str(config.lora.rank) if config.lora.enabled else 'full fine-tune'}",
            f"  data: {config.data.path} -> " + ", ".join(f"{k} {v}" for k, v in self.data_stats.items()),
            f"  batch: {config.train.batch_size} {unit} x {self.gradient_accumulation} accumulation x "
            f"{self.accelerator.num_processes} processes = {self.total_batch_size} {unit}/step; "
            f"{config.train.max_steps} steps; attention {self.attention}; precision {config.model.mixed_precision}",
            "  conventions: " + "; ".join(f"{k}: {v}" for k, v in conventions(config).items()),
        ]
        if self.global_step:
            lines.append(f"  resuming at step {self.global_step}")
        return "\n".join(lines)


def train_dpo(config: DPORunConfig) -> dict:
    """Build a :class:`DPOTrainer`, set it up and train; returns the final metrics."""
    trainer = DPOTrainer(config)
    trainer.setup()
    return trainer.train()


def train_from_command_line(description: str, fixed_overrides: list[str] | None = None,
                            argv: list[str] | None = None) -> dict:
    """The body of the scripts/train_*.py DPO entry points: ``--config FILE [key=value ...]`` plus the script's
    ``fixed_overrides`` (e.g. ``train.objective=rank``) -> one training run; returns the final metrics."""
    from diffalign.training.online import train_from_command_line as run

    return run(description, DPORunConfig, train_dpo, argv, fixed_overrides)
