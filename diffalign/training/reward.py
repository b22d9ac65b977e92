"""Direct reward fine-tuning on accelerate: DRaFT, DRaFT-K, DRaFT-LV, AlignProp and ReFL as one loop.

One micro-step: a batch of training prompts, x_T from a generator seeded by (seed, process,
position), DDIM sampling through the accelerate-prepared UNet with gradient only inside the
method's window (:func:`diffalign.sampling.gradient_window`; each gradient step checkpointed when
``model.gradient_checkpointing``), VAE decode with gradient into [0, 1] images, the reward scorer's
differentiable path, and ``-mean(reward) + kl_weight * mean(kl)``. The methods differ only in the
window (and DRaFT-LV's re-noised copies of the final latent). Held-out prompts with fixed seeds are
scored by the reward and the auxiliary scorers at the start, every ``train.evaluate_every`` steps
and at the end, to show reward hacking.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from diffalign.config import ConfigError, RewardRunConfig
from diffalign.losses import direct_reward_loss
from diffalign.sampling import (Conditioning, GradientWindow, ddim_step, decode_latents, gradient_window,
                                guided_prediction, sample_with_gradient_window)
from diffalign.training.online import (MetricsLog, checkpoint_manager, evaluate_held_out, make_accelerator,
                                       position_generator, prepare_policy, train_to_end)
from diffalign.training.sampler import ResumableBatchSampler

logger = logging.getLogger(__name__)


def reward_conventions(config: RewardRunConfig) -> dict[str, str]:
    """The numeric conventions of a reward run, logged at start and written into summary.json."""
    reward = config.reward
    return {
        "objective": f"-mean(reward) + {reward.kl_weight} * mean(kl); reward = {reward.scorer} on its own scale, "
                     "higher is better",
        "images": "VAE decode / 2 + 0.5, clamped to [0, 1], into the scorer's differentiable (tensor) path once",
        "window": {"draft": "gradient through every sampling step",
                   "draft-k": f"gradient through the last {reward.k} steps",
                   "draft-lv": f"gradient through the last step and {reward.lv_copies} re-noised copies of the "
                               "detached final latent (rewards averaged)",
                   "alignprop": f"gradient through the last k' ~ U{{1..{reward.k}}} steps, drawn per sample",
                   "refl": "no gradient up to a random late step, one gradient step there, its predicted x0 "
                           "decoded"}[reward.method],
        "kl": "mean over a sample's gradient steps of the mean squared difference (over C, H, W) of guided noise "
              "predictions, policy vs reference (base model)",
        "sampling": f"DDIM {config.sampling.num_inference_steps} steps, eta {config.sampling.eta}, CFG "
                    f"{config.sampling.guidance_scale} batched into one UNet call",
    }


class RewardTrainer:
    """Composes components, prompts, the reward scorer, the gradient window and checkpoints."""

    def __init__(self, config: RewardRunConfig):
        self.config = config
        self.accelerator = make_accelerator(config, config.train.gradient_accumulation_steps)
        self.checkpoints = checkpoint_manager(config)
        self.log = MetricsLog(self.accelerator, config.output_dir)
        self.global_step = 0

    @property
    def history(self) -> list[dict]:
        return self.log.rows

    def setup(self, components=None) -> None:
        """Load components, pipeline, prompts and scorers; add LoRA; prepare; resume if asked."""
        from diffalign.evaluation.prompts import load_prompt_set
        from diffalign.scorers import get_scorer

        config, device = self.config, self.accelerator.device
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        self.prompts = load_prompt_set(config.prompts.train)
        self.held_out = (load_prompt_set(config.prompts.held_out).subset(config.prompts.held_out_limit)
                         if config.prompts.held_out else None)
        self.scorer = get_scorer(config.reward.scorer, device=device)
        if not self.scorer.differentiable:
            raise ConfigError(f"reward.scorer={config.reward.scorer} has no differentiable path; direct reward "
                              "fine-tuning needs one (e.g. pickscore, hpsv2.1, aesthetic, clipscore)")
        self.aux_scorers = {spec: get_scorer(spec, device=device) for spec in config.reward.aux_scorers}
        policy = prepare_policy(config, self.accelerator, components)
        self.policy, self.components, self.pipeline = policy, policy.components, policy.pipeline
        self.unet, self.optimizer, self.lr_scheduler = policy.unet, policy.optimizer, policy.lr_scheduler
        self.trainable_params, self.reference, self.attention = policy.trainable_params, policy.reference, policy.attention
        self._resume()

    def _resume(self) -> None:
        path = self.checkpoints.resolve(self.config.checkpoint.resume_from)
        if path is None:
            return
        self.accelerator.load_state(str(path))
        self.global_step = self.checkpoints.read_state(path)["global_step"]
        self.log.resume(self.global_step)
        logger.info("resumed from %s at step %d", path, self.global_step)

    def _generator(self, position: int, salt: int) -> torch.Generator:
        return position_generator(self.config.train.seed, self.accelerator.process_index, position, salt)

    def _window(self, batch: int, position: int) -> GradientWindow:
        reward, steps = self.config.reward, self.config.sampling.num_inference_steps
        refl = tuple(reward.refl_steps) if reward.refl_steps else None
        return gradient_window(reward.method, steps, batch, reward.k, self._generator(position, 1), refl)

    def _size(self) -> tuple[int, int]:
        return self.pipeline._size(self.config.sampling.height, self.config.sampling.width)

    def _renoised_copies(self, final: torch.Tensor, cond: Conditioning, position: int) -> list[torch.Tensor]:
        """DRaFT-LV: the detached final latent re-noised to the last step's noise level, denoised with gradient."""
        scheduler, sampling = self.pipeline.scheduler, self.config.sampling
        last = scheduler.timesteps[-1]
        generator = self._generator(position, 2)
        copies = []
        for _ in range(self.config.reward.lv_copies):
            noise = torch.randn(final.shape, generator=generator).to(final.device)
            noisy = scheduler.add_noise(final.detach(), noise, last.reshape(1))
            output = guided_prediction(self.unet, noisy, last, cond, sampling.guidance_scale, scheduler)
            copies.append(ddim_step(scheduler, output, last, noisy, eta=0.0)[0])
        return copies

    def micro_step(self, prompts: list[str], position: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and detached metrics of one batch of prompts at micro-step ``position``."""
        config, pipeline = self.config, self.pipeline
        sampling, reward = config.sampling, config.reward
        height, width = self._size()
        cond = pipeline.conditioning(prompts, None, sampling.guidance_scale, height, width)
        pipeline.scheduler.set_timesteps(sampling.num_inference_steps, device=self.accelerator.device)
        x_T = pipeline.initial_latents(len(prompts), height, width, self._generator(position, 0),
                                       cond.prompt_embeds.dtype)
        window = self._window(len(prompts), position)
        with self.accelerator.autocast():
            sample = sample_with_gradient_window(
                self.unet, pipeline.scheduler, x_T, cond, sampling.guidance_scale, window, sampling.eta,
                self._generator(position, 3), config.model.gradient_checkpointing,
                self.reference.active if reward.kl_weight else None, return_predicted_x0=reward.method == "refl")
            latents = [sample.latents]
            if reward.method == "draft-lv":
                latents += self._renoised_copies(sample.latents, cond, position)
            rewards = torch.stack([self.scorer(decode_latents(pipeline.vae, x), prompts, path="tensor")
                                   for x in latents]).mean(dim=0)
        loss = direct_reward_loss(rewards, sample.kl, reward.kl_weight)
        metrics = {"loss": loss.detach(), "reward": rewards.detach().mean(), "kl": sample.kl.detach().mean(),
                   "gradient_steps": window.mask.float().sum(dim=1).mean()}
        if self.aux_scorers:
            with torch.no_grad():
                images = decode_latents(pipeline.vae, sample.latents.detach())
                for spec, scorer in self.aux_scorers.items():
                    metrics[f"aux/{spec}"] = scorer(images, prompts, path="auto").mean()
        return loss, metrics

    def _prompt_batches(self):
        config, accelerator = self.config, self.accelerator
        sampler = ResumableBatchSampler(len(self.prompts), config.train.batch_size, config.train.seed,
                                        accelerator.process_index, accelerator.num_processes,
                                        start=self.global_step * config.train.gradient_accumulation_steps)
        position = self.global_step * config.train.gradient_accumulation_steps
        for batch in sampler:
            yield position, [self.prompts.records[index].text for index, _ in batch]
            position += 1

    def evaluate(self) -> dict[str, float]:
        """Mean reward and auxiliary scores of the held-out prompts with fixed seeds (official PIL path)."""
        if self.held_out is None:
            return {}
        config = self.config
        return evaluate_held_out(self.pipeline, self.accelerator.unwrap_model(self.unet),
                                 [record.text for record in self.held_out.records],
                                 {config.reward.scorer: self.scorer, **self.aux_scorers}, config.sampling,
                                 config.train.batch_size, config.prompts.held_out_seed, self.accelerator.autocast)

    def train(self) -> dict:
        """Run to ``train.max_steps``; save the final weights and summary; returns the final metrics."""
        return train_to_end(self, reward_conventions(self.config))

    def run_steps(self) -> None:
        """The optimisation loop from the current step to ``train.max_steps``."""
        config, accelerator = self.config, self.accelerator
        batches = self._prompt_batches()
        progress = tqdm(range(config.train.max_steps), initial=self.global_step, desc=f"{config.reward.method} steps",
                        disable=not accelerator.is_local_main_process)
        window: list[dict[str, torch.Tensor]] = []
        window_steps, start = 0, time.perf_counter()
        while self.global_step < config.train.max_steps:
            for _ in range(config.train.gradient_accumulation_steps):
                position, prompts = next(batches)
                with accelerator.accumulate(self.unet):
                    loss, metrics = self.micro_step(prompts, position)
                    if not torch.isfinite(loss.detach()):
                        raise RuntimeError(f"non-finite loss {loss.item()} at step {self.global_step + 1}; the last "
                                           "checkpoint is intact (lower train.learning_rate, or keep the VAE in fp32)")
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        max_norm = config.train.max_grad_norm if config.train.max_grad_norm > 0 else math.inf
                        norm = accelerator.clip_grad_norm_(self.trainable_params, max_norm)
                        metrics["grad_norm"] = torch.as_tensor(norm if norm is not None else float("nan")).float()
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                window.append(metrics)
            self.global_step += 1
            window_steps += 1
            progress.update(1)
            if self.global_step % config.logging.every == 0 or self.global_step == config.train.max_steps:
                row = self._log(window, window_steps, time.perf_counter() - start)
                progress.set_postfix(reward=f"{row['reward']:.4f}")
                window, window_steps, start = [], 0, time.perf_counter()
            if config.checkpoint.every and self.global_step % config.checkpoint.every == 0:
                self.save_checkpoint()
            if config.train.evaluate_every and self.global_step % config.train.evaluate_every == 0 \
                    and self.global_step < config.train.max_steps:
                self.log.write_eval(self.global_step, self.evaluate())
        progress.close()

    def save_checkpoint(self) -> Path:
        self.accelerator.step = self.global_step * self.config.train.gradient_accumulation_steps
        return self.checkpoints.save(self.accelerator, self.global_step, {})

    def _log(self, window: list[dict[str, torch.Tensor]], steps: int, elapsed: float) -> dict:
        """One row: each metric's mean over the ``steps`` optimizer steps since the last row."""
        samples = steps * self.config.train.batch_size * self.config.train.gradient_accumulation_steps * \
            self.accelerator.num_processes
        return self.log.reduce(window, self.global_step, lr=self.lr_scheduler.get_last_lr()[0],
                               samples_per_s=samples / max(elapsed, 1e-9))

    def describe(self) -> str:
        config = self.config
        lines = [f"diffalign {config.reward.method.upper()} on {config.model.pretrained} "
                 f"({'SDXL' if self.components.is_sdxl else 'SD'}), "
                 f"{'LoRA r=' + str(config.lora.rank) if config.lora.enabled else 'full fine-tune'}, "
                 f"reward {config.reward.scorer}",
                 f"  prompts: {config.prompts.train} ({len(self.prompts)}); held out: "
                 f"{config.prompts.held_out or 'none'}; {config.train.max_steps} steps; attention {self.attention}",
                 "  conventions: " + "; ".join(f"{k}: {v}" for k, v in reward_conventions(config).items())]
        if self.global_step:
            lines.append(f"  resuming at step {self.global_step}")
        return "\n".join(lines)


def train_reward(config: RewardRunConfig) -> dict:
    """Build a :class:`RewardTrainer`, set it up and train; returns the final metrics."""
    trainer = RewardTrainer(config)
    trainer.setup()
    return trainer.train()
