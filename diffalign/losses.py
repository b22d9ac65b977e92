"""Pure loss functions on tensors: no models, no I/O.

Conventions (also logged with each run, see ``diffalign.config.conventions``):

- A per-sample denoising error is the **mean** squared error over all non-batch elements
  (C, H, W of the latent), computed in float32.
- ``beta`` is the Diffusion-DPO authors' scale: ``logit = -0.5 * beta * (model diff - ref diff)``.
- Losses are ``-logsigmoid`` **per pair**, then the mean over pairs (taking the mean of the
  errors before the sigmoid was a reported bug in a public implementation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample in float32.

    prediction, target: [B, ...] of the same shape. Returns [B].
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    squared = (prediction.float() - target.float()).pow(2)
    return squared.reshape(squared.shape[0], -1).mean(dim=1)


def prediction_target(prediction_type: str, noise: torch.Tensor, latents: torch.Tensor,
                      timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to predict.

    epsilon: the noise. v_prediction: ``v = sqrt(a_t) * noise - sqrt(1 - a_t) * x0`` (Salimans & Ho).
    noise, latents: [B, C, H, W]; timesteps: [B] integer; alphas_cumprod: [T] float.
    """
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        alpha_bar = alphas_cumprod.to(device=latents.device, dtype=torch.float32)[timesteps]
        alpha_bar = alpha_bar.reshape(-1, *([1] * (latents.ndim - 1)))
        return (alpha_bar.sqrt() * noise.float() - (1.0 - alpha_bar).sqrt() * latents.float()).to(noise.dtype)
    raise ValueError(f"unsupported prediction_type {prediction_type!r}: expected 'epsilon' or 'v_prediction'")


@dataclass
class DPOOutput:
    """Result of :func:`diffusion_dpo_loss`.

    loss: scalar. logits: [B] (the DPO logit per pair, > 0 when the policy prefers the winner more
    than the reference does). implicit_accuracy: scalar fraction of pairs with logit > 0.
    model_diff, ref_diff: [B] error differences winner minus loser (lower is better).
    """

    loss: torch.Tensor
    logits: torch.Tensor
    implicit_accuracy: torch.Tensor
    model_diff: torch.Tensor
    ref_diff: torch.Tensor


def diffusion_dpo_loss(model_err_w: torch.Tensor, model_err_l: torch.Tensor,
                       ref_err_w: torch.Tensor, ref_err_l: torch.Tensor, beta: float,
                       positive_lambda: float = 0.0) -> DPOOutput:
    """Diffusion-DPO loss (Wallace et al. 2023) in the authors' convention.

    All inputs [B]: per-sample mean squared errors (see :func:`per_sample_mse`) of winners (w)
    and losers (l) under the policy and the frozen reference, at the same noise and timestep.
    ``logit = -0.5 * beta * ((err_w - err_l) - (ref_err_w - ref_err_l))`` and
    ``loss = mean(-logsigmoid(logit))``. Reference errors carry no gradient.

    ``positive_lambda`` > 0 is DPO-Positive (Pal et al. 2024) in this convention:
    ``logit -= 0.5 * beta * positive_lambda * relu(err_w - ref_err_w)``, a penalty only where the
    policy denoises the winner worse than the reference. Plain DPO can lower its loss by making
    both errors grow (losers faster), which degrades the model; this term removes that route.
    """
    beta = float(beta)
    model_diff = model_err_w - model_err_l
    ref_diff = (ref_err_w - ref_err_l).detach()
    logits = -0.5 * beta * (model_diff - ref_diff)
    if positive_lambda:
        logits = logits - 0.5 * beta * float(positive_lambda) * F.relu(model_err_w - ref_err_w.detach())
    loss = -F.logsigmoid(logits).mean()
    implicit_accuracy = (logits > 0).float().mean().detach()
    return DPOOutput(loss=loss, logits=logits.detach(), implicit_accuracy=implicit_accuracy,
                     model_diff=model_diff.detach(), ref_diff=ref_diff)


def sft_loss(model_err_w: torch.Tensor) -> torch.Tensor:
    """Supervised fine-tuning on winners only (the baseline): mean of the per-sample errors [B]."""
    return model_err_w.mean()
