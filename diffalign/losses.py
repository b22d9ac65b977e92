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


PAIR_WEIGHTINGS = ("uniform", "gain", "dcg")
RANK_SOURCES = ("labels", "model")


@dataclass
class RankedDPOOutput:
    """Result of :func:`ranked_dpo_loss`.

    loss: scalar. logits: [B, K, K], entry (i, j) = ``-0.5 * beta * (s_i - s_j)`` (> 0 when the policy
    prefers i over j more than the reference does). pair_weights: [B, K, K], non-zero only where
    image i is labelled better than image j (normalised to mean 1 over each prompt's weighted pairs).
    implicit_accuracy: scalar, weighted fraction of labelled pairs with logit > 0. pairs: how many
    labelled (non-tied, valid) pairs the batch holds.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    pair_weights: torch.Tensor
    implicit_accuracy: torch.Tensor
    pairs: int


def ranks(scores: torch.Tensor, mask: torch.Tensor, tie_break: torch.Tensor | None = None) -> torch.Tensor:
    """1-based positions [B, K] of the valid entries of each row, best (highest score) first.

    Equal scores are ordered by ``tie_break`` (higher first) if given; entries equal in both share
    the average of their positions (fractional ranking). Invalid entries (mask False) get 0 and
    never outrank anything. Float, no gradient.
    """
    scores = scores.detach()
    tie_break = torch.zeros_like(scores) if tie_break is None else tie_break.detach()
    score_i, score_j = scores.unsqueeze(-1), scores.unsqueeze(-2)
    break_i, break_j = tie_break.unsqueeze(-1), tie_break.unsqueeze(-2)
    others = mask.unsqueeze(-2) & ~torch.eye(scores.shape[-1], dtype=torch.bool, device=scores.device)
    beaten_by = ((score_j > score_i) | ((score_j == score_i) & (break_j > break_i))) & others  # [B, i, j]
    tied_with = (score_j == score_i) & (break_j == break_i) & others
    positions = 1.0 + beaten_by.sum(-1) + 0.5 * tied_with.sum(-1)
    return torch.where(mask, positions, torch.zeros_like(positions))


def ranked_pair_weights(labels: torch.Tensor, mask: torch.Tensor, weighting: str = "uniform",
                        positions: torch.Tensor | None = None) -> torch.Tensor:
    """Pair weights Δ [B, K, K] (no gradient): Δ_ij > 0 only where ψ_i > ψ_j and both images are valid.

    labels ψ: [B, K], higher is better (e.g. RankDPO win fractions in [0, 1]); mask: [B, K] bool.
    ``uniform``: 1 (all-pairs DPO); ``gain``: |G_i - G_j| with G = 2^ψ (the same as 2^ψ - 1 here);
    ``dcg`` (LiPO-λ): |G_i - G_j| · |1/D(π_i) - 1/D(π_j)| with D(π) = log2(1 + π) and π the 1-based
    ``positions`` [B, K] (default: ranks by the labels). Each prompt's weights are scaled to mean 1 over
    its weighted pairs, so a prompt's loss is a weighted mean of its pair losses and K = 2 with
    binary labels gives every pair weight 1, as Diffusion-DPO does. Ties (ψ_i = ψ_j) weigh 0.
    """
    if weighting not in PAIR_WEIGHTINGS:
        raise ValueError(f"pair weighting must be one of {PAIR_WEIGHTINGS}, got {weighting!r}")
    labels = labels.detach().float()
    ordered = (labels.unsqueeze(-1) > labels.unsqueeze(-2)) & mask.unsqueeze(-1) & mask.unsqueeze(-2)
    if weighting == "uniform":
        weights = ordered.float()
    else:
        gain = torch.exp2(labels)
        weights = (gain.unsqueeze(-1) - gain.unsqueeze(-2)).abs()
        if weighting == "dcg":
            if positions is None:
                positions = ranks(labels, mask)
            discount = 1.0 / torch.log2(1.0 + positions.detach().float().clamp(min=1.0))
            weights = weights * (discount.unsqueeze(-1) - discount.unsqueeze(-2)).abs()
        weights = weights * ordered
    total = weights.sum(dim=(-1, -2), keepdim=True)
    count = ordered.sum(dim=(-1, -2), keepdim=True)
    return torch.where(total > 0, weights * count / total.clamp(min=1e-12), torch.zeros_like(weights))


def ranked_dpo_loss(model_err: torch.Tensor, ref_err: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                    beta: float, weighting: str = "uniform", rank_source: str = "labels",
                    positive_lambda: float = 0.0) -> RankedDPOOutput:
    """Ranked Diffusion-DPO over K images per prompt (RankDPO; LiPO-λ weights with ``dcg``).

    model_err, ref_err: [B, K] per-sample errors (:func:`per_sample_mse`) of the K images of each prompt
    under the policy and the reference, all K at one shared timestep and noise; labels: [B, K], higher
    is better; mask: [B, K] bool, False for padding (prompts with fewer than K images).
    Implicit score ``s_i = err_i - ref_err_i`` (lower is better), pair logit ``-0.5 * beta * (s_i - s_j)``
    (Diffusion-DPO's scale), loss = mean over prompts with at least one labelled pair of
    ``Σ_ij Δ_ij · -logsigmoid(logit_ij) / Σ_ij [ψ_i > ψ_j]`` with Δ from :func:`ranked_pair_weights`.
    ``rank_source='model'`` takes the DCG positions π from the current implicit scores (LiPO-λ) instead
    of the labels, ties broken by the labels (at step 0 every implicit score is 0, so π starts as the
    label order). ``positive_lambda`` > 0 subtracts DPO-Positive's ``0.5 * beta * positive_lambda *
    relu(s_i)`` from every logit whose winner is i. With K = 2 and labels (1, 0) this equals
    :func:`diffusion_dpo_loss` (with the same ``positive_lambda``).
    """
    if rank_source not in RANK_SOURCES:
        raise ValueError(f"rank source must be one of {RANK_SOURCES}, got {rank_source!r}")
    if not model_err.shape == ref_err.shape == labels.shape == mask.shape or model_err.dim() != 2:
        raise ValueError(f"model_err, ref_err, labels and mask must all be [B, K]; got {tuple(model_err.shape)}, "
                         f"{tuple(ref_err.shape)}, {tuple(labels.shape)}, {tuple(mask.shape)}")
    mask = mask.bool()
    implicit = model_err.float() - ref_err.detach().float()  # [B, K], lower is better
    positions = ranks(-implicit, mask, tie_break=labels) if rank_source == "model" else None
    weights = ranked_pair_weights(labels, mask, weighting, positions)
    logits = -0.5 * float(beta) * (implicit.unsqueeze(-1) - implicit.unsqueeze(-2))
    if positive_lambda:
        logits = logits - 0.5 * float(beta) * float(positive_lambda) * F.relu(implicit).unsqueeze(-1)
    ordered = weights > 0
    pair_count = ordered.sum(dim=(-1, -2))
    per_prompt = (weights * -F.logsigmoid(logits)).sum(dim=(-1, -2)) / pair_count.clamp(min=1)
    has_pairs = pair_count > 0
    loss = per_prompt[has_pairs].mean() if has_pairs.any() else implicit.sum() * 0.0
    correct = (weights * (logits > 0)).sum()
    accuracy = correct / weights.sum() if weights.sum() > 0 else torch.zeros(())
    return RankedDPOOutput(loss=loss, logits=logits.detach(), pair_weights=weights,
                           implicit_accuracy=accuracy.detach(), pairs=int(pair_count.sum()))


# Trajectory and reward losses ------------------------------------------------------------------

@dataclass
class D3POOutput:
    """D3PO loss (scalar, mean over pairs x steps), per-element ``logits`` [N] (detached), the clamped
    log-ratios of winner and loser [N] (detached) and the fraction of clamped ratios."""

    loss: torch.Tensor
    logits: torch.Tensor
    log_ratio_w: torch.Tensor
    log_ratio_l: torch.Tensor
    clamped_fraction: torch.Tensor


def d3po_loss(logp_w: torch.Tensor, logp_l: torch.Tensor, ref_logp_w: torch.Tensor, ref_logp_l: torch.Tensor,
              beta: float = 0.1, clip: float = 0.1) -> D3POOutput:
    """D3PO's per-denoising-step DPO loss with a clamped importance-ratio trust region.

    Inputs [N]: log-probs (:func:`diffalign.sampling.ddim_step_with_logprob`) of the same step of the
    preferred (w) and the other (l) trajectory of a pair under the policy (with gradient) and the
    reference. ``r = clamp(exp(logp - ref_logp), 1 - clip, 1 + clip)``,
    ``loss = mean(-logsigmoid(beta * (log r_w - log r_l)))``; a ratio outside the trust region is
    clamped and carries no gradient (as in the authors' code). D3PO: beta 0.1, clip 0.1.
    """
    if not 0 < clip < 1:
        raise ValueError(f"clip must be in (0, 1), got {clip}")
    shapes = {tuple(t.shape) for t in (logp_w, logp_l, ref_logp_w, ref_logp_l)}
    if len(shapes) != 1:
        raise ValueError(f"the four log-prob tensors must have one shape, got {sorted(shapes)}")
    ratio_w = torch.exp(logp_w.float() - ref_logp_w.detach().float()).clamp(1 - clip, 1 + clip)
    ratio_l = torch.exp(logp_l.float() - ref_logp_l.detach().float()).clamp(1 - clip, 1 + clip)
    log_w, log_l = ratio_w.log(), ratio_l.log()
    logits = float(beta) * (log_w - log_l)
    clamped = ((ratio_w <= 1 - clip) | (ratio_w >= 1 + clip) | (ratio_l <= 1 - clip) | (ratio_l >= 1 + clip))
    return D3POOutput(loss=-F.logsigmoid(logits).mean(), logits=logits.detach(), log_ratio_w=log_w.detach(),
                      log_ratio_l=log_l.detach(), clamped_fraction=clamped.float().mean().detach())


def pareto_preference(scores_a: torch.Tensor, scores_b: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Preference of a over b by Pareto dominance over R rewards (higher is better): [N] long, 1 = a
    dominates (every reward of a >= b's - ``margin`` and at least one > b's + ``margin``), -1 = b
    dominates, 0 = tie or incomparable (such pairs carry no gradient). Inputs [N, R] (or [N] for R = 1)."""
    a, b = scores_a.float(), scores_b.float()
    if a.shape != b.shape:
        raise ValueError(f"scores_a {tuple(a.shape)} and scores_b {tuple(b.shape)} differ in shape")
    if a.dim() == 1:
        a, b = a[:, None], b[:, None]
    better, worse = a > b + margin, a < b - margin
    a_wins = better.any(dim=1) & ~worse.any(dim=1)
    b_wins = worse.any(dim=1) & ~better.any(dim=1)
    return a_wins.long() - b_wins.long()


def direct_reward_loss(rewards: torch.Tensor, kl: torch.Tensor | None = None, kl_weight: float = 0.0) -> torch.Tensor:
    """DRaFT / AlignProp / ReFL objective: ``-mean(rewards) + kl_weight * mean(kl)``. ``rewards`` [B] from a
    scorer's differentiable path (higher is better, the scorer's own scale); ``kl`` [B] the mean squared
    difference of noise predictions against the reference over the gradient steps."""
    loss = -rewards.float().mean()
    if kl_weight:
        if kl is None:
            raise ValueError("kl_weight > 0 needs the kl term")
        loss = loss + float(kl_weight) * kl.float().mean()
    return loss
