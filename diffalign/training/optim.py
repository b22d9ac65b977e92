"""Optimizers and learning-rate schedules from a :class:`~diffalign.config.TrainConfig`."""

from __future__ import annotations

import torch
from diffusers.optimization import get_scheduler

from diffalign.config import TrainConfig


def build_optimizer(train: TrainConfig, params: list[torch.nn.Parameter], learning_rate: float):
    """AdamW (torch), Adafactor (transformers; relative_step and scale_parameter off, as the
    Diffusion-DPO SDXL recipe) or 8-bit AdamW (bitsandbytes, optional dependency)."""
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=learning_rate, betas=(train.adam_beta1, train.adam_beta2),
                                 eps=train.adam_epsilon, weight_decay=train.weight_decay)
    if train.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=learning_rate, relative_step=False, scale_parameter=False,
                         warmup_init=False, weight_decay=train.weight_decay)
    if train.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as error:
            raise ImportError("train.optimizer=adamw8bit needs bitsandbytes: pip install 'diffalign[bnb]'") from error
        return bnb.optim.AdamW8bit(params, lr=learning_rate, betas=(train.adam_beta1, train.adam_beta2),
                                   eps=train.adam_epsilon, weight_decay=train.weight_decay)
    raise ValueError(f"unknown optimizer {train.optimizer!r}")


def build_lr_scheduler(train: TrainConfig, optimizer, num_processes: int):
    """diffusers schedule; counts are multiplied by the process count because accelerate steps a
    prepared scheduler once per process for each optimizer step."""
    return get_scheduler(train.lr_scheduler, optimizer=optimizer,
                         num_warmup_steps=train.warmup_steps * num_processes,
                         num_training_steps=train.max_steps * num_processes)
