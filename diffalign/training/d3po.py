"""D3PO on accelerate: per-denoising-step DPO on pairs of trajectories, labelled by scorers or by people.

One optimizer step = one round. Scorer mode: ``train.rollout_prompts`` prompts per device, K =
``d3po.images_per_prompt`` trajectories each from one shared initial noise (stochastic DDIM, eta > 0,
sampled through the accelerate-prepared policy), scored (official PIL path) and paired: every pair of
one prompt's K images with a Pareto winner (ties and incomparable pairs are dropped). Human mode:
rounds of stored rollouts (``diffalign label sample``) with the averaged labels people gave them. Each
labelled pair trains ``d3po.timestep_fraction`` of its steps (a random subset):
:func:`diffalign.losses.d3po_loss` on the recomputed log-probs of the recorded transitions under the
policy (with gradient, through the prepared module) and the reference (the LoRA-disabled base). The
first round is replayed before any update: recorded and recomputed log-probs must agree.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from diffalign.config import D3PORunConfig
from diffalign.losses import d3po_loss, pareto_preference
from diffalign.sampling import Trajectory, step_log_prob
from diffalign.training.online import (MetricsLog, checkpoint_manager, evaluate_held_out, make_accelerator,
                                       position_generator, prepare_policy, train_to_end)
from diffalign.training.sampler import ResumableBatchSampler

logger = logging.getLogger(__name__)


def d3po_conventions(config: D3PORunConfig) -> dict[str, str]:
    """The numeric conventions of a D3PO run, logged at start and written into summary.json."""
    d3po = config.d3po
    labels = (f"Pareto dominance over {d3po.scorers} (official PIL path; margin {d3po.margin})" if d3po.labels == "scorer"
              else f"people's scores averaged over annotators (margin {d3po.margin}), from {d3po.label_dir}")
    return {
        "log_prob": "Gaussian log-density of a recorded DDIM transition, mean over latent C, H, W (as the D3PO code)",
        "loss": f"-logsigmoid({d3po.beta} * (log r_w - log r_l)), r = clamp(p_policy / p_reference, "
                f"{1 - d3po.clip}, {1 + d3po.clip}); mean over pairs x trained steps",
        "reference": "the base model (LoRA adapters disabled, or a frozen copy of the initial UNet)",
        "pairs": f"same prompt, same initial noise; labels: {labels}",
        "steps": f"a random {d3po.timestep_fraction:.0%} of each pair's {config.sampling.num_inference_steps} DDIM "
                 f"steps (eta {config.sampling.eta}, CFG {config.sampling.guidance_scale})",
    }


def prompt_pairs(groups: int, k: int, scores: torch.Tensor, margin: float) -> tuple[torch.Tensor, int]:
    """(winner, loser) row pairs [P, 2] from ``groups`` x ``k`` rows (row g*k + i = image i of prompt g),
    ``scores`` [groups * k, R] higher is better; and the number of tied or incomparable pairs dropped."""
    first, second = zip(*[(g * k + i, g * k + j) for g in range(groups) for i in range(k) for j in range(i + 1, k)])
    first, second = torch.tensor(first), torch.tensor(second)
    preference = pareto_preference(scores[first], scores[second], margin)
    keep = preference != 0
    winners = torch.where(preference > 0, first, second)[keep]
    losers = torch.where(preference > 0, second, first)[keep]
    return torch.stack([winners, losers], dim=1), int((~keep).sum())


class D3POTrainer:
    """Composes the policy, rollouts (online or stored), labels, the D3PO loss and checkpoints."""

    def __init__(self, config: D3PORunConfig):
        self.config = config
        self.accelerator = make_accelerator(config)
        self.checkpoints = checkpoint_manager(config)
        self.log = MetricsLog(self.accelerator, config.output_dir)
        self.global_step = 0
        self.replayed = False

    @property
    def history(self) -> list[dict]:
        return self.log.rows

    def setup(self, components=None) -> None:
        """Load the policy, prompts or stored rollouts and scorers; resume if asked."""
        from diffalign.evaluation.prompts import load_prompt_set
        from diffalign.scorers import get_scorer

        config, device = self.config, self.accelerator.device
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        if config.d3po.labels == "human":
            from diffalign.labeling import LabelledRollouts

            self.stored = LabelledRollouts(config.d3po.label_dir, config.d3po.margin)
            self.units = len(self.stored)
        else:
            self.prompts = load_prompt_set(config.prompts.train)
            self.units = len(self.prompts)
        self.scorers = {spec: get_scorer(spec, device=device) for spec in config.d3po.scorers}
        self.held_out = (load_prompt_set(config.prompts.held_out).subset(config.prompts.held_out_limit)
                         if config.prompts.held_out and self.scorers else None)
        policy = prepare_policy(config, self.accelerator, components)
        self.policy, self.components, self.pipeline = policy, policy.components, policy.pipeline
        self.unet, self.optimizer, self.lr_scheduler = policy.unet, policy.optimizer, policy.lr_scheduler
        self.trainable_params, self.reference, self.attention = policy.trainable_params, policy.reference, policy.attention
        path = self.checkpoints.resolve(config.checkpoint.resume_from)
        if path is not None:
            self.accelerator.load_state(str(path))
            self.global_step = self.checkpoints.read_state(path)["global_step"]
            self.log.resume(self.global_step)
            self.replayed = True

    def _generator(self, position: int, salt: int) -> torch.Generator:
        return position_generator(self.config.train.seed, self.accelerator.process_index, position, salt)

    def _round_units(self, round_index: int) -> list[int]:
        """The prompt (or stored rollout) indices of round ``round_index`` on this process."""
        sampler = ResumableBatchSampler(self.units, self.config.train.rollout_prompts, self.config.train.seed,
                                        self.accelerator.process_index, self.accelerator.num_processes,
                                        start=round_index)
        return [index for index, _ in next(iter(sampler))]

    def scorer_round(self, round_index: int) -> tuple[Trajectory, torch.Tensor, dict[str, torch.Tensor]]:
        """Sample K trajectories per prompt (shared initial noise), score them, pair them."""
        config, pipeline = self.config, self.pipeline
        sampling, k = config.sampling, config.d3po.images_per_prompt
        texts = [self.prompts.records[i].text for i in self._round_units(round_index)]
        rows = [text for text in texts for _ in range(k)]
        height, width = pipeline._size(sampling.height, sampling.width)
        noise = pipeline.initial_latents(len(texts), height, width, self._generator(round_index, 0))
        with self.accelerator.autocast():
            out = pipeline.rollout(rows, sampling.num_inference_steps, sampling.guidance_scale, sampling.eta,
                                   self._generator(round_index, 1), noise.repeat_interleave(k, dim=0),
                                   height=height, width=width, output_type="pt", unet=self.unet, progress=False)
        with torch.no_grad():
            scores = torch.stack([scorer(out.images, rows, path="pil").float().cpu()
                                  for scorer in self.scorers.values()], dim=1)
        pairs, dropped = prompt_pairs(len(texts), k, scores, config.d3po.margin)
        metrics = {f"sample/{name}": scores[:, i].mean() for i, name in enumerate(self.scorers)}
        metrics["ties_dropped"] = torch.tensor(float(dropped))
        return out.trajectory, pairs, metrics

    def human_round(self, round_index: int) -> tuple[Trajectory, torch.Tensor, dict[str, torch.Tensor]]:
        """Stored rollouts of this round's prompts and the pairs of their averaged labels."""
        trajectory, pairs, dropped = self.stored.round(self._round_units(round_index))
        return trajectory, pairs, {"ties_dropped": torch.tensor(float(dropped))}

    def train_round(self, trajectory: Trajectory, pairs: torch.Tensor, round_index: int) -> dict[str, torch.Tensor]:
        """One optimizer step on a round's labelled pairs [P, 2] (rows of ``trajectory``)."""
        config, accelerator, scheduler = self.config, self.accelerator, self.pipeline.scheduler
        d3po, steps = config.d3po, trajectory.num_steps
        scheduler.set_timesteps(steps, device=accelerator.device)
        if not self.replayed:
            with accelerator.autocast():
                gap = self.pipeline.check_replay(trajectory, unet=self.unet, atol=d3po.replay_atol)
            accelerator.print(f"replay check passed: recomputed log-probs match the recorded ones (max gap {gap:.2e})")
            self.replayed = True
        trained = max(1, round(d3po.timestep_fraction * steps))
        labelled = len(pairs) > 0
        if not labelled:  # this process still joins the gradient all-reduce, with a zero-weighted loss
            pairs = torch.tensor([[0, 0]])
        order = torch.rand(len(pairs), steps, generator=self._generator(round_index, 2)).argsort(dim=1)[:, :trained]
        chunks = [(start, min(start + config.train.pair_batch_size, len(pairs)))
                  for start in range(0, len(pairs), config.train.pair_batch_size)]
        calls = [(chunk, j) for chunk in chunks for j in range(trained)]
        totals = {"loss": 0.0, "implicit_acc": 0.0, "clamped_fraction": 0.0}
        for number, ((start, end), j) in enumerate(calls):
            winners, losers, step = pairs[start:end, 0], pairs[start:end, 1], order[start:end, j]
            share = (end - start) / (len(pairs) * trained) if labelled else 0.0
            syncing = number == len(calls) - 1
            with contextlib.nullcontext() if syncing else accelerator.no_sync(self.unet), accelerator.autocast():
                rows, steps_of_rows = torch.cat([winners, losers]), step.repeat(2)  # one UNet call per model
                logp_w, logp_l = step_log_prob(self.unet, scheduler, trajectory, steps_of_rows, rows).chunk(2)
                with torch.no_grad(), self.reference.active() as reference:
                    ref_w, ref_l = step_log_prob(reference, scheduler, trajectory, steps_of_rows, rows).chunk(2)
                out = d3po_loss(logp_w, logp_l, ref_w, ref_l, d3po.beta, d3po.clip)
                accelerator.backward(out.loss * share)
            totals["loss"] += out.loss.item() * share
            totals["implicit_acc"] += (out.logits > 0).float().mean().item() * share
            totals["clamped_fraction"] += out.clamped_fraction.item() * share
        max_norm = config.train.max_grad_norm if config.train.max_grad_norm > 0 else math.inf
        norm = accelerator.clip_grad_norm_(self.trainable_params, max_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics = {key: torch.tensor(value) for key, value in totals.items()}
        metrics["pairs"] = torch.tensor(float(len(pairs) if labelled else 0))
        metrics["grad_norm"] = torch.as_tensor(norm if norm is not None else float("nan")).float()
        return metrics

    def evaluate(self) -> dict[str, float]:
        """Mean scores of the held-out prompts with fixed seeds (scorer mode scorers; official PIL path)."""
        if self.held_out is None:
            return {}
        config = self.config
        return evaluate_held_out(self.pipeline, self.accelerator.unwrap_model(self.unet),
                                 [record.text for record in self.held_out.records], self.scorers, config.sampling,
                                 config.train.rollout_prompts, config.prompts.held_out_seed, self.accelerator.autocast)

    def run_steps(self) -> None:
        """Rounds from the current step to ``train.max_steps`` (logging, checkpoints, evaluation)."""
        config = self.config
        progress = tqdm(range(config.train.max_steps), initial=self.global_step, desc="D3PO rounds",
                        disable=not self.accelerator.is_local_main_process)
        make_round = self.human_round if config.d3po.labels == "human" else self.scorer_round
        window: list[dict[str, torch.Tensor]] = []
        start = time.perf_counter()
        while self.global_step < config.train.max_steps:
            trajectory, pairs, metrics = make_round(self.global_step)
            metrics.update(self.train_round(trajectory, pairs, self.global_step))
            window.append(metrics)
            self.global_step += 1
            progress.update(1)
            if self.global_step % config.logging.every == 0 or self.global_step == config.train.max_steps:
                row = self.log.reduce(window, self.global_step, lr=self.lr_scheduler.get_last_lr()[0],
                                      seconds_per_round=(time.perf_counter() - start) / len(window))
                progress.set_postfix(loss=f"{row['loss']:.4f}", pairs=int(row["pairs"]))
                window, start = [], time.perf_counter()
            if config.checkpoint.every and self.global_step % config.checkpoint.every == 0:
                self.save_checkpoint()
            if config.train.evaluate_every and self.global_step % config.train.evaluate_every == 0 \
                    and self.global_step < config.train.max_steps:
                self.log.write_eval(self.global_step, self.evaluate())
        progress.close()

    def save_checkpoint(self) -> Path:
        self.accelerator.step = self.global_step
        return self.checkpoints.save(self.accelerator, self.global_step, {})

    def train(self) -> dict:
        """Run to ``train.max_steps``; save the final weights and summary; returns the final metrics."""
        return train_to_end(self, d3po_conventions(self.config))

    def describe(self) -> str:
        config = self.config
        source = (f"prompts {config.prompts.train} ({self.units}), K={config.d3po.images_per_prompt}"
                  if config.d3po.labels == "scorer" else f"labelled rollouts {config.d3po.label_dir} ({self.units})")
        lines = [f"diffalign D3PO ({config.d3po.labels} labels) on {config.model.pretrained} "
                 f"({'SDXL' if self.components.is_sdxl else 'SD'}), "
                 f"{'LoRA r=' + str(config.lora.rank) if config.lora.enabled else 'full fine-tune'}",
                 f"  {source}; {config.train.max_steps} rounds; attention {self.attention}",
                 "  conventions: " + "; ".join(f"{k}: {v}" for k, v in d3po_conventions(config).items())]
        if self.global_step:
            lines.append(f"  resuming at round {self.global_step}")
        return "\n".join(lines)


def train_d3po(config: D3PORunConfig) -> dict:
    """Build a :class:`D3POTrainer`, set it up and train; returns the final metrics."""
    trainer = D3POTrainer(config)
    trainer.setup()
    return trainer.train()
