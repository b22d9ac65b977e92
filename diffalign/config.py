"""Typed run configuration: dataclasses, YAML loading, ``key=value`` overrides, validation.

Every option is declared once here with its default and a one-line ``help``. A config file is
YAML whose nesting mirrors the dataclasses (``train: {beta: 5000}``); overrides use dotted keys
(``train.beta=2500``) and YAML scalars (``true``, ``1e-5``, ``[a, b]``). Unknown keys, wrong types
and values outside their choices raise :class:`ConfigError` naming the dotted key, before any
model is loaded.

Conventions (logged with each run, see :func:`conventions`):

- ``train.beta`` is in the Diffusion-DPO authors' convention: per-sample errors are the **mean**
  over latent elements (C, H, W), and the DPO logit is ``-0.5 * beta * (model diff - ref diff)``.
  5000 is the authors' value for SD1.5 and SDXL. With a **sum** over latent elements, the same
  beta would be C*H*W times larger (16384 for 4x64x64 latents).
- Images enter the VAE as float tensors in [-1, 1]; latents are the VAE posterior **mean** times
  the VAE scaling factor.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


def _opt(default: Any, help: str, choices: tuple | None = None) -> Any:
    metadata = {"help": help, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ModelConfig:
    pretrained: str = _opt("", "Hub id or local folder of a diffusers SD 1.x/2.x or SDXL pipeline.")
    revision: str | None = _opt(None, "Hub revision (branch, tag or commit) of `pretrained`.")
    variant: str | None = _opt(None, "Weight variant to load, e.g. 'fp16'.")
    vae: str | None = _opt(None, "Separate VAE (Hub id or folder), e.g. madebyollin/sdxl-vae-fp16-fix.")
    attention: str = _opt("auto", "Attention backend: xformers only where it can run, else SDPA.",
                          ("auto", "sdpa", "xformers"))
    gradient_checkpointing: bool = _opt(False, "Recompute UNet activations in backward to save memory.")
    mixed_precision: str = _opt("fp32", "Autocast precision (fp32 = none); trainable parameters stay float32.",
                                ("fp32", "fp16", "bf16"))
    vae_dtype: str = _opt("float32", "VAE precision ('weight' = same as frozen weights). float32 avoids SDXL VAE NaNs.",
                          ("float32", "float16", "bfloat16", "weight"))
    prediction_type: str | None = _opt(None, "Override the scheduler's prediction type.",
                                       (None, "epsilon", "v_prediction"))


@dataclass
class LoraConfig:
    enabled: bool = _opt(True, "Train LoRA adapters (reference = adapters disabled); false = full fine-tune.")
    rank: int = _opt(8, "LoRA rank r.")
    alpha: float | None = _opt(None, "LoRA alpha (scale = alpha / rank); default: equal to rank.")
    dropout: float = _opt(0.0, "Dropout on the LoRA branch input.")
    target_modules: list[str] = _opt(["to_q", "to_k", "to_v", "to_out.0"],
                                     "UNet module names that get adapters.")


@dataclass
class DataConfig:
    format: str = _opt("pickapic", "Data schema: pickapic / jsonl pairs, or ranked (K images per prompt, "
                                   "docs/data.md; for train.objective=rank).", ("pickapic", "jsonl", "ranked"))
    path: str = _opt("", "pickapic: Hub name, parquet file/folder; jsonl: the .jsonl file.")
    split: str = _opt("train", "Split to train on (pickapic).")
    streaming: bool = _opt(False, "Stream the dataset instead of downloading it (pickapic).")
    max_pairs: int | None = _opt(None, "Use at most this many pairs (after dropping ties).")
    resolution: int = _opt(512, "Training resolution in pixels (square).")
    center_crop: bool = _opt(True, "Center crop; false = random crop (same crop for both images of a pair).")
    random_flip: bool = _opt(False, "Horizontal flip with p=0.5, the same for both images of a pair.")
    prompt_dropout: float = _opt(0.0, "Probability of training a pair with the empty prompt (paper: 0.2 for SD1.5).")
    num_workers: int = _opt(0, "DataLoader worker processes.")


@dataclass
class CacheConfig:
    enabled: bool = _opt(False, "Pre-compute VAE latents and text embeddings once, then train from disk.")
    dir: str = _opt(".diffalign-cache", "Cache root; each model+data+preprocessing gets its own key folder.")
    dtype: str = _opt("float16", "Storage dtype of cached tensors.", ("float16", "bfloat16", "float32"))
    batch_size: int = _opt(8, "Pairs (or ranked records) per VAE / text-encoder batch while building the cache.")
    shard_size: int = _opt(1024, "Pairs (or ranked records) per cache shard file.")


@dataclass
class OptimizerConfig:
    """Optimizer, schedule and seed: shared by every trainer's ``train`` section."""

    max_steps: int = _opt(2000, "Optimizer steps.")
    learning_rate: float = _opt(1e-5, "Peak learning rate (before scale_lr).")
    lr_scheduler: str = _opt("constant_with_warmup", "diffusers lr schedule.",
                             ("constant", "constant_with_warmup", "linear", "cosine"))
    warmup_steps: int = _opt(0, "Linear warmup steps.")
    optimizer: str = _opt("adamw", "adamw (torch), adafactor (transformers, relative_step off), adamw8bit (bitsandbytes).",
                          ("adamw", "adafactor", "adamw8bit"))
    adam_beta1: float = _opt(0.9, "AdamW beta1.")
    adam_beta2: float = _opt(0.999, "AdamW beta2.")
    adam_epsilon: float = _opt(1e-8, "AdamW epsilon.")
    weight_decay: float = _opt(1e-2, "Weight decay.")
    max_grad_norm: float = _opt(1.0, "Gradient clipping norm (0 = off).")
    seed: int = _opt(0, "Seed for initialisation, data order, noise and timesteps.")


@dataclass
class TrainConfig(OptimizerConfig):
    objective: str = _opt("dpo", "dpo = Diffusion-DPO; sft = supervised fine-tuning on winners only; rank = ranked "
                                 "DPO over K images per prompt (data.format=ranked).", ("dpo", "sft", "rank"))
    beta: float = _opt(5000.0, "DPO beta, authors' convention (mean over latent elements, -0.5*beta).")
    positive_lambda: float = _opt(0.0, "DPO-Positive penalty: logit -= 0.5*beta*lambda*relu(err_w - ref_err_w) "
                                       "(0 = Diffusion-DPO); keeps the winners' error from growing.")
    min_timestep: int = _opt(0, "Training timesteps are uniform over [min_timestep, T); > 0 trains only the noisier "
                                "steps, where layout, composition and (on the embedded model) colour are decided "
                                "(0 = the paper's uniform range).")
    batch_size: int = _opt(1, "Pairs per device per micro-step.")
    gradient_accumulation_steps: int = _opt(1, "Micro-steps per optimizer step (ignored if total_batch_size is set).")
    total_batch_size: int | None = _opt(None, "Pairs per optimizer step over all devices; derives gradient accumulation.")
    scale_lr: bool = _opt(False, "Multiply learning_rate by the total batch size (paper: 1e-8 x 2048).")


@dataclass
class RankedConfig:
    weighting: str = _opt("dcg", "Pair weights of the ranked loss: uniform (all-pairs DPO), gain |2^psi_i - 2^psi_j|, "
                                 "dcg (gain x |1/log2(1+pi_i) - 1/log2(1+pi_j)|, LiPO-lambda).",
                          ("uniform", "gain", "dcg"))
    rank_source: str = _opt("labels", "Positions pi for dcg: from the labels, or from the model's current implicit "
                                      "scores (LiPO-lambda).", ("labels", "model"))
    unet_micro_batch: int = _opt(0, "Images per UNet call when a batch holds B x K images (0 = all in one call).")


@dataclass
class CurriculumConfig:
    stages: int = _opt(0, "Curriculum DPO: train pairs from easy (large gap) to hard in this many stages (0 = off). "
                          "Needs data.format=jsonl with a 'gap' on every pair.")
    steps_per_stage: int = _opt(500, "Optimizer steps per stage; the last stage continues to train.max_steps.")
    mode: str = _opt("cumulative", "cumulative: stage s trains chunks 0..s; exclusive: only chunk s.",
                     ("cumulative", "exclusive"))
    refresh_reference: bool = _opt(False, "At the start of each stage after the first, the current model becomes "
                                          "the DPO reference (Curry-DPO); saved in checkpoints for resume.")


@dataclass
class CheckpointConfig:
    every: int = _opt(500, "Save a resumable checkpoint every N optimizer steps (0 = only at the end).")
    keep_last: int = _opt(3, "Keep the newest M checkpoints.")
    resume_from: str | None = _opt(None, "'latest' or a checkpoint folder to resume from.")


@dataclass
class LoggingConfig:
    tracker: str = _opt("tensorboard", "Metrics tracker.", ("tensorboard", "wandb", "none"))
    every: int = _opt(10, "Log every N optimizer steps (D3PO: rounds) the mean of each metric over those N.")
    project: str = _opt("diffalign", "Tracker project name.")


@dataclass
class ValidationConfig:
    prompts: list[str] = _opt([], "Fixed prompts rendered with fixed seeds to watch training.")
    seeds: list[int] = _opt([0], "One image per prompt and seed.")
    every: int = _opt(0, "Render every N optimizer steps (0 = only at the end, if prompts are set).")
    num_inference_steps: int = _opt(25, "Sampler steps for validation images.")
    guidance_scale: float = _opt(5.0, "Classifier-free guidance for validation images.")


@dataclass
class DPORunConfig:
    """A Diffusion-DPO (or SFT baseline) training run."""

    output_dir: str = _opt("outputs/dpo", "Where checkpoints, the final weights, logs and the model card go.")
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ranked: RankedConfig = field(default_factory=RankedConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def validate(self, num_processes: int = 1) -> None:
        """Cross-field checks; raises ConfigError. Called by :func:`load_config`."""
        if not self.model.pretrained:
            raise ConfigError("model.pretrained is required: a Hub id or a local diffusers pipeline folder.")
        if not self.data.path:
            raise ConfigError("data.path is required: a dataset name, parquet path or JSONL file.")
        positive = {"train.batch_size": self.train.batch_size, "train.max_steps": self.train.max_steps,
                    "train.gradient_accumulation_steps": self.train.gradient_accumulation_steps,
                    "data.resolution": self.data.resolution, "lora.rank": self.lora.rank,
                    "cache.batch_size": self.cache.batch_size, "cache.shard_size": self.cache.shard_size,
                    "checkpoint.keep_last": self.checkpoint.keep_last, "logging.every": self.logging.every}
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{key} must be > 0, got {value}.")
        non_negative = {"train.learning_rate": self.train.learning_rate, "train.warmup_steps": self.train.warmup_steps,
                        "train.max_grad_norm": self.train.max_grad_norm, "checkpoint.every": self.checkpoint.every,
                        "train.positive_lambda": self.train.positive_lambda, "train.min_timestep": self.train.min_timestep,
                        "validation.every": self.validation.every, "data.num_workers": self.data.num_workers}
        for key, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{key} must be >= 0, got {value}.")
        if (self.train.objective == "rank") != (self.data.format == "ranked"):
            raise ConfigError("train.objective=rank trains on ranked records and needs data.format=ranked (and "
                              f"the other way round); got objective {self.train.objective!r}, format "
                              f"{self.data.format!r}.")
        if self.curriculum.stages < 0 or self.curriculum.steps_per_stage < 1:
            raise ConfigError("curriculum.stages must be >= 0 and curriculum.steps_per_stage >= 1, got "
                              f"{self.curriculum.stages} and {self.curriculum.steps_per_stage}.")
        if self.curriculum.stages and (self.data.format != "jsonl" or self.train.objective == "rank"):
            raise ConfigError("curriculum.stages > 0 needs pairwise data.format=jsonl with a 'gap' on every pair "
                              f"(got format {self.data.format!r}, objective {self.train.objective!r}).")
        if self.curriculum.refresh_reference and not self.curriculum.stages:
            raise ConfigError("curriculum.refresh_reference refreshes the reference at curriculum stages; set "
                              "curriculum.stages > 0 or turn it off.")
        if self.ranked.unet_micro_batch < 0:
            raise ConfigError(f"ranked.unet_micro_batch must be >= 0, got {self.ranked.unet_micro_batch}.")
        if self.train.objective in ("dpo", "rank") and self.train.beta <= 0:
            raise ConfigError(f"train.beta must be > 0 for DPO, got {self.train.beta}.")
        if not 0.0 <= self.data.prompt_dropout < 1.0:
            raise ConfigError(f"data.prompt_dropout must be in [0, 1), got {self.data.prompt_dropout}.")
        if self.data.resolution % 8:
            raise ConfigError(f"data.resolution must be a multiple of 8 (VAE factor), got {self.data.resolution}.")
        if self.cache.enabled and (not self.data.center_crop or self.data.random_flip):
            raise ConfigError("cache.enabled needs deterministic preprocessing: set data.center_crop=true and "
                              "data.random_flip=false (cached latents are computed once).")
        if self.cache.enabled and self.data.streaming:
            raise ConfigError("cache.enabled cannot be combined with data.streaming=true.")
        self.gradient_accumulation(num_processes)

    def gradient_accumulation(self, num_processes: int = 1) -> int:
        """Micro-steps per optimizer step: derived from total_batch_size when it is set."""
        total = self.train.total_batch_size
        if total is None:
            return self.train.gradient_accumulation_steps
        per_micro_step = self.train.batch_size * num_processes
        if total <= 0 or total % per_micro_step:
            raise ConfigError(
                f"train.total_batch_size={total} is not divisible by train.batch_size x processes = "
                f"{self.train.batch_size} x {num_processes} = {per_micro_step}.")
        return total // per_micro_step



# Direct reward fine-tuning (DRaFT, DRaFT-K, DRaFT-LV, AlignProp, ReFL) ---------------------------------

@dataclass
class PromptsConfig:
    train: str = _opt("", "Training prompt set spec, as for `diffalign eval generate` (a built-in name, jsonl:FILE, "
                          "parti:FILE, ...).")
    held_out: str = _opt("", "Fixed held-out prompt set scored during training to catch reward hacking ('' = none).")
    held_out_limit: int | None = _opt(16, "Use the first N held-out prompts (None = all).")
    held_out_seed: int = _opt(1000, "Seed of the held-out images (the same noise at every evaluation).")


@dataclass
class SamplingConfig:
    num_inference_steps: int = _opt(20, "DDIM steps of each training sample.")
    guidance_scale: float = _opt(5.0, "Classifier-free guidance (both halves in one UNet call).")
    eta: float = _opt(0.0, "DDIM eta (0 = deterministic DDIM, as DRaFT).")
    height: int | None = _opt(None, "Image height in pixels (None = the UNet's native size).")
    width: int | None = _opt(None, "Image width in pixels (None = the UNet's native size).")


@dataclass
class RewardConfig:
    method: str = _opt("draft-k", "draft: gradient through every step; draft-k: the last k; draft-lv: the last step "
                                  "plus lv_copies re-noised copies; alignprop: the last k' ~ U{1..k} per sample; "
                                  "refl: stop at a random late step and decode its predicted x0.",
                       ("draft", "draft-k", "draft-lv", "alignprop", "refl"))
    k: int = _opt(1, "draft-k: gradient steps; alignprop: the largest truncation.")
    lv_copies: int = _opt(2, "draft-lv: re-noised copies of the final latent, each denoised with gradient.")
    refl_steps: list[int] = _opt([], "refl: [first, last] step index (0-based) of the random stop step; [] = the "
                                     "last quarter of the steps.")
    scorer: str = _opt("pickscore", "Reward scorer spec (differentiable path; higher is better, the scorer's scale).")
    kl_weight: float = _opt(0.0, "Weight of the KL regulariser: mean squared difference of guided noise predictions "
                                 "against the reference over the gradient steps.")
    aux_scorers: list[str] = _opt([], "Scorers logged on the samples and held-out prompts but not trained on.")


@dataclass
class RewardTrainConfig(OptimizerConfig):
    batch_size: int = _opt(1, "Prompts (one sample each) per device per micro-step.")
    gradient_accumulation_steps: int = _opt(1, "Micro-steps per optimizer step.")
    evaluate_every: int = _opt(0, "Score the held-out prompts every N optimizer steps (0 = at the start and end only).")


@dataclass
class RewardRunConfig:
    """A direct reward fine-tuning run (DRaFT family, AlignProp, ReFL)."""

    output_dir: str = _opt("outputs/draft", "Where checkpoints, the final weights, logs and the model card go.")
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    train: RewardTrainConfig = field(default_factory=RewardTrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def validate(self, num_processes: int = 1) -> None:
        """Cross-field checks; raises ConfigError. Called by :func:`load_config`."""
        if not self.model.pretrained:
            raise ConfigError("model.pretrained is required: a Hub id or a local diffusers pipeline folder.")
        if not self.prompts.train:
            raise ConfigError("prompts.train is required: a prompt set spec such as jsonl:prompts.jsonl.")
        positive = {"train.batch_size": self.train.batch_size, "train.max_steps": self.train.max_steps,
                    "train.gradient_accumulation_steps": self.train.gradient_accumulation_steps,
                    "sampling.num_inference_steps": self.sampling.num_inference_steps, "reward.k": self.reward.k,
                    "lora.rank": self.lora.rank, "checkpoint.keep_last": self.checkpoint.keep_last,
                    "logging.every": self.logging.every}
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{key} must be > 0, got {value}.")
        non_negative = {"sampling.eta": self.sampling.eta, "reward.kl_weight": self.reward.kl_weight,
                        "reward.lv_copies": self.reward.lv_copies, "train.learning_rate": self.train.learning_rate,
                        "checkpoint.every": self.checkpoint.every, "train.evaluate_every": self.train.evaluate_every}
        for key, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{key} must be >= 0, got {value}.")
        steps = self.sampling.num_inference_steps
        if self.reward.method in ("draft-k", "alignprop") and self.reward.k > steps:
            raise ConfigError(f"reward.k={self.reward.k} exceeds sampling.num_inference_steps={steps}.")
        refl = self.reward.refl_steps
        if refl and (len(refl) != 2 or not 0 <= refl[0] <= refl[1] < steps):
            raise ConfigError(f"reward.refl_steps must be [first, last] with 0 <= first <= last < {steps}, got {refl}.")



# D3PO: per-denoising-step DPO on pairs of trajectories ---------------------------------------------

@dataclass
class D3POConfig:
    labels: str = _opt("scorer", "scorer: sample online and label pairs with d3po.scorers (Pareto dominance); human: "
                                 "train on rollouts stored by `diffalign label sample` and the labels people gave "
                                 "them on the labeling page.", ("scorer", "human"))
    scorers: list[str] = _opt(["pickscore"], "Scorers that label pairs (scorer mode); several = Pareto dominance, "
                                             "incomparable pairs carry no gradient.")
    margin: float = _opt(0.0, "Score (or averaged human score) differences within this margin are ties.")
    images_per_prompt: int = _opt(2, "K trajectories per prompt from one shared initial noise; all K(K-1)/2 pairs "
                                     "are labelled (scorer mode).")
    beta: float = _opt(0.1, "D3PO beta: logit = beta * (log r_w - log r_l).")
    clip: float = _opt(0.1, "Trust region: importance ratios clamped to [1 - clip, 1 + clip] (no gradient outside).")
    timestep_fraction: float = _opt(1.0, "Fraction of each trajectory's steps trained (a random subset per pair).")
    label_dir: str = _opt("", "Human mode: the folder of `diffalign label sample` holding rollouts and labels.jsonl.")
    replay_atol: float = _opt(1e-3, "Largest allowed gap between recorded and replayed log-probs before training.")


@dataclass
class D3POSamplingConfig(SamplingConfig):
    eta: float = _opt(1.0, "DDIM eta, > 0: the step noise makes the trajectories of one initial noise differ.")


@dataclass
class D3POTrainConfig(OptimizerConfig):
    rollout_prompts: int = _opt(4, "Prompts sampled (x images_per_prompt trajectories) per round on each device.")
    pair_batch_size: int = _opt(4, "Pairs per UNet micro-batch when training a round's pairs.")
    evaluate_every: int = _opt(0, "Score the held-out prompts every N optimizer steps (0 = at the start and end only).")


@dataclass
class D3PORunConfig:
    """A D3PO run: one optimizer step per round of rollouts (scorer mode) or of stored labelled rollouts (human)."""

    output_dir: str = _opt("outputs/d3po", "Where checkpoints, the final weights, logs and the model card go.")
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    sampling: D3POSamplingConfig = field(default_factory=D3POSamplingConfig)
    d3po: D3POConfig = field(default_factory=D3POConfig)
    train: D3POTrainConfig = field(default_factory=D3POTrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def validate(self, num_processes: int = 1) -> None:
        """Cross-field checks; raises ConfigError. Called by :func:`load_config`."""
        if not self.model.pretrained:
            raise ConfigError("model.pretrained is required: a Hub id or a local diffusers pipeline folder.")
        if self.d3po.labels == "scorer" and not self.prompts.train:
            raise ConfigError("prompts.train is required in scorer mode: a prompt set spec such as jsonl:prompts.jsonl.")
        if self.d3po.labels == "scorer" and not self.d3po.scorers:
            raise ConfigError("d3po.scorers is empty: scorer mode labels pairs with at least one scorer.")
        if self.d3po.labels == "human" and not self.d3po.label_dir:
            raise ConfigError("d3po.labels=human needs d3po.label_dir: the folder written by `diffalign label sample`.")
        if not self.sampling.eta > 0:
            raise ConfigError(f"sampling.eta must be > 0 for D3PO (a DDIM step needs a density), got {self.sampling.eta}.")
        if self.d3po.images_per_prompt < 2:
            raise ConfigError(f"d3po.images_per_prompt must be >= 2 (K < 2 gives no pair), got "
                              f"{self.d3po.images_per_prompt}.")
        if not 0 < self.d3po.timestep_fraction <= 1:
            raise ConfigError(f"d3po.timestep_fraction must be in (0, 1], got {self.d3po.timestep_fraction}.")
        if not 0 < self.d3po.clip < 1 or self.d3po.beta <= 0:
            raise ConfigError(f"d3po.clip must be in (0, 1) and d3po.beta > 0, got {self.d3po.clip} and {self.d3po.beta}.")
        positive = {"train.rollout_prompts": self.train.rollout_prompts, "train.max_steps": self.train.max_steps,
                    "train.pair_batch_size": self.train.pair_batch_size, "lora.rank": self.lora.rank,
                    "sampling.num_inference_steps": self.sampling.num_inference_steps,
                    "checkpoint.keep_last": self.checkpoint.keep_last, "logging.every": self.logging.every}
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{key} must be > 0, got {value}.")


def type_name(hint: Any) -> str:
    """Readable name of a type hint: 'float', 'int | None', 'list[str]'."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else type_name(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"list[{type_name(typing.get_args(hint)[0])}]"
    return getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the type hint ``hint``; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {type_name(hint)}, got {value!r} ({type(value).__name__}).")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r} ({type(value).__name__}).")
        (item_hint,) = typing.get_args(hint)
        return [_coerce(item, item_hint, f"{key}[{i}]") for i, item in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-5 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r} ({type(value).__name__}).")
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}.")
    if not isinstance(value, hint):
        raise ConfigError(f"{key}: expected {type_name(hint)}, got {value!r} ({type(value).__name__}).")
    return value


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, checking keys, types and choices."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
        raise ConfigError(f"Unknown config key '{prefix}{key}'.{hint} Valid keys here: {', '.join(fields)}.")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value or {}, prefix=f"{key}.")
            continue
        value = _coerce(value, hint, key)
        choices = fields[name].metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}.")
        kwargs[name] = value
    return cls(**kwargs)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML scalars) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override {item!r} must look like key=value, e.g. train.beta=5000.")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"Override {item!r}: '{part}' is not a section.")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None,
                cls: type = DPORunConfig, num_processes: int = 1) -> Any:
    """Read a YAML config, apply overrides, build and validate the typed config."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from error
    data = apply_overrides(data, overrides or [])
    config = from_dict(cls, data)
    config.validate(num_processes=num_processes)
    return config


def to_dict(config: Any) -> dict:
    """The config as a plain nested dict (for YAML dumps and trackers)."""
    return dataclasses.asdict(config)


def conventions(config: DPORunConfig) -> dict[str, str]:
    """The numeric conventions of a run, logged at start and written into the model card."""
    return {
        "beta": f"{config.train.beta} (Diffusion-DPO authors' scale: logit = -0.5*beta*(model diff - ref diff))",
        "positive_lambda": f"{config.train.positive_lambda} (DPO-Positive: logit -= 0.5*beta*lambda*"
                           "relu(err_w - ref_err_w); 0 = plain Diffusion-DPO)",
        "error_reduction": "per-sample MSE = mean over latent C,H,W (not sum)",
        "loss_reduction": "-logsigmoid per pair, then mean over pairs",
        "image_range": "VAE input in [-1, 1]; latents = posterior mean * scaling_factor",
        "timesteps": f"uniform over [{config.train.min_timestep}, T) of the scheduler's training timesteps, shared by "
                     "the two images of a pair",
        "noise": "one Gaussian noise tensor shared by the two images of a pair",
        **({"reference": "refreshed at each curriculum stage: the model at the stage's first step"}
           if config.curriculum.stages and config.curriculum.refresh_reference else
           {"reference": "the base model (LoRA adapters disabled, or a frozen copy of the initial UNet)"}),
        **({"ranked": f"K images of a record share noise and timestep; s_i = err_i - ref_err_i; pair logit "
                      f"-0.5*beta*(s_i - s_j) for psi_i > psi_j, weighted {config.ranked.weighting} (positions from "
                      f"{config.ranked.rank_source}), weights mean 1 over each record's labelled pairs"}
           if config.train.objective == "rank" else {}),
    }
