"""Training loops. Diffusion-DPO and its SFT baseline live in :mod:`diffalign.training.dpo`."""

from diffalign.training.dpo import DPOTrainer, NonFiniteLossError, train_dpo

__all__ = ["DPOTrainer", "NonFiniteLossError", "train_dpo"]
