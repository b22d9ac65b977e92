"""DDIM steps with log-probabilities, trajectory records and gradient windows (D3PO, DRaFT, AlignProp, ReFL).

Conventions, fixed here and logged by the trainers that use them:

- The DDIM step is computed in float32. The previous timestep comes from the scheduler's own
  ``timesteps`` list (any ``timestep_spacing``); after the last step the scheduler's
  ``final_alpha_cumprod`` is used.
- ``eta`` must be > 0: at eta = 0 the step is deterministic and has no density.
- A step's log-probability is the Gaussian density of ``x_{t-1}`` given ``x_t``, reduced over the
  latent's C, H, W elements by ``mean`` (DDPO / D3PO code) or ``sum`` (the true log-density).
- Latents are those of the pipeline (VAE latents times the scaling factor); images leave the VAE in
  [-1, 1] and are mapped to [0, 1] once, by :func:`decode_latents`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch

REDUCTIONS = ("mean", "sum")
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class StepOutput:
    """One DDIM step: ``prev_sample`` x_{t-1} [B, C, h, w], ``log_prob`` [B] (fp32), the Gaussian's
    ``mean`` [B, C, h, w] and ``std`` [B, 1, 1, 1], and the predicted x_0 [B, C, h, w]."""

    prev_sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    pred_original_sample: torch.Tensor


def previous_alphas(scheduler, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ᾱ_t and ᾱ_prev [B] (float32) for timesteps [B] taken from ``scheduler.timesteps``; the step after
    the last one uses ``scheduler.final_alpha_cumprod``."""
    schedule = scheduler.timesteps.to("cpu", torch.long)
    if schedule.numel() == 0 or getattr(scheduler, "num_inference_steps", None) is None:
        raise ValueError("call scheduler.set_timesteps(num_inference_steps) before taking DDIM steps")
    wanted = timesteps.to("cpu", torch.long).reshape(-1)
    matches = wanted[:, None] == schedule[None, :]
    if not matches.any(dim=1).all():
        unknown = sorted({int(t) for t, hit in zip(wanted, matches.any(dim=1)) if not hit})
        raise ValueError(f"timesteps {unknown} are not in the scheduler's list {schedule.tolist()}")
    position = matches.int().argmax(dim=1)
    alphas = scheduler.alphas_cumprod.to("cpu", torch.float32)
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float32).cpu()
    alpha_t = alphas[wanted]
    is_last = position == schedule.numel() - 1
    prev = schedule[(position + 1).clamp(max=schedule.numel() - 1)]
    alpha_prev = torch.where(is_last, final.expand_as(alpha_t), alphas[prev])
    return alpha_t, alpha_prev


def _ddim_gaussian(scheduler, model_output: torch.Tensor, timestep, sample: torch.Tensor,
                   eta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean [B, C, h, w], std [B, 1, 1, 1] and predicted x_0 of the DDIM transition from x_t (float32)."""
    if getattr(scheduler.config, "thresholding", False):
        raise ValueError("scheduler.config.thresholding=True is not supported by diffalign's DDIM step")
    timesteps = torch.as_tensor(timestep).reshape(-1)
    if timesteps.numel() == 1:
        timesteps = timesteps.expand(sample.shape[0])
    alpha_t, alpha_prev = (value.to(sample.device).view(-1, 1, 1, 1) for value in previous_alphas(scheduler, timesteps))
    x_t, output = sample.float(), model_output.float()
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        x0, eps = (x_t - (1 - alpha_t).sqrt() * output) / alpha_t.sqrt(), output
    elif kind == "v_prediction":
        x0 = alpha_t.sqrt() * x_t - (1 - alpha_t).sqrt() * output
        eps = alpha_t.sqrt() * output + (1 - alpha_t).sqrt() * x_t
    elif kind == "sample":
        x0 = output
        eps = (x_t - alpha_t.sqrt() * x0) / (1 - alpha_t).sqrt()
    else:
        raise ValueError(f"unknown prediction_type {kind!r}")
    if getattr(scheduler.config, "clip_sample", False):
        limit = scheduler.config.clip_sample_range
        x0 = x0.clamp(-limit, limit)
        eps = (x_t - alpha_t.sqrt() * x0) / (1 - alpha_t).sqrt()
    variance = (1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)
    std = eta * variance.clamp(min=0).sqrt()
    mean = alpha_prev.sqrt() * x0 + (1 - alpha_prev - std ** 2).clamp(min=0).sqrt() * eps
    return mean, std, x0


def ddim_step(scheduler, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
              noise: torch.Tensor | None = None, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step without a log-prob (eta >= 0; eta = 0 is deterministic): (x_{t-1}, predicted x_0),
    both float32 [B, C, h, w]. ``noise`` (standard normal, like the sample) is drawn when not given."""
    from diffusers.utils.torch_utils import randn_tensor

    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    mean, std, x0 = _ddim_gaussian(scheduler, model_output, timestep, sample, eta)
    if eta == 0:
        return mean, x0
    if noise is None:
        noise = randn_tensor(model_output.shape, generator=generator, device=sample.device, dtype=model_output.dtype)
    return mean + std * noise.float(), x0


def ddim_step_with_logprob(scheduler, model_output: torch.Tensor, timestep: torch.Tensor | int,
                           sample: torch.Tensor, eta: float = 1.0, prev_sample: torch.Tensor | None = None,
                           generator: torch.Generator | None = None, reduction: str = "mean") -> StepOutput:
    """One stochastic DDIM step x_t -> x_{t-1} and its log-probability.

    ``model_output`` [B, C, h, w] is the (guided) UNet output in the scheduler's ``prediction_type``;
    ``timestep`` an int or [B] tensor from ``scheduler.timesteps``; ``sample`` x_t [B, C, h, w]. With
    ``prev_sample`` given the step scores it (replay); otherwise x_{t-1} = mean + std * z with z drawn
    like the diffusers DDIM scheduler draws it (``randn_tensor`` with ``generator``). The log-prob is
    ``-(x_{t-1} - mean)^2 / (2 std^2) - log std - log sqrt(2 pi)`` per element, reduced over C, H, W
    by ``reduction``; its gradient flows through ``mean`` only (x_{t-1} is detached in it).
    """
    from diffusers.utils.torch_utils import randn_tensor

    if not eta > 0:
        raise ValueError(f"eta must be > 0 for a DDIM step to have a log-probability, got {eta}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    mean, std, x0 = _ddim_gaussian(scheduler, model_output, timestep, sample, eta)
    if not (std > 0).all():
        raise ValueError("a DDIM step has zero variance (alpha_prev = 1, e.g. set_alpha_to_one=True at the last "
                         "step): its log-prob is undefined; use a scheduler with set_alpha_to_one=False")
    if prev_sample is None:
        noise = randn_tensor(model_output.shape, generator=generator, device=sample.device, dtype=model_output.dtype)
        prev_sample = mean + std * noise.float()
    log_prob = -((prev_sample.detach().float() - mean) ** 2) / (2 * std ** 2) - std.log() - LOG_SQRT_2PI
    dims = tuple(range(1, log_prob.dim()))
    log_prob = log_prob.mean(dim=dims) if reduction == "mean" else log_prob.sum(dim=dims)
    return StepOutput(prev_sample=prev_sample, log_prob=log_prob, mean=mean, std=std, pred_original_sample=x0)


@dataclass
class Conditioning:
    """What the UNet is conditioned on for B samples.

    ``prompt_embeds`` [B, L, D]; ``negative_prompt_embeds`` [B, L, D] (None without classifier-free
    guidance); SDXL only: ``pooled`` / ``negative_pooled`` [B, P] and ``time_ids`` [B, 6] (the same
    time ids serve both halves of the guidance batch).
    """

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    negative_pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def select(self, rows) -> "Conditioning":
        """The conditioning of some samples (``rows``: index, slice or bool mask over B)."""
        return Conditioning(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[rows]
                               for f in fields(self)})

    def to(self, device=None, dtype=None) -> "Conditioning":
        return Conditioning(**{f.name: None if getattr(self, f.name) is None else
                               getattr(self, f.name).to(device=device, dtype=dtype) for f in fields(self)})

    def repeat(self, times: int) -> "Conditioning":
        """Each sample repeated ``times`` times, consecutively (sample i -> rows i*times .. i*times+times-1)."""
        return Conditioning(**{f.name: None if getattr(self, f.name) is None else
                               getattr(self, f.name).repeat_interleave(times, dim=0) for f in fields(self)})


def guided_prediction(unet, latents: torch.Tensor, timestep, cond: Conditioning, guidance_scale: float,
                      scheduler=None) -> torch.Tensor:
    """The classifier-free guided UNet output for latents [B, C, h, w], both halves in one UNet call.

    ``timestep``: int or [B]; ``guidance_scale`` <= 1 or no negative embeddings: the conditional output.
    ``scheduler.scale_model_input`` is applied when a scheduler is given (identity for DDIM).
    """
    guided = guidance_scale > 1 and cond.negative_prompt_embeds is not None
    model_input = scheduler.scale_model_input(latents, timestep) if scheduler is not None else latents
    timesteps = torch.as_tensor(timestep, device=latents.device).reshape(-1).expand(latents.shape[0])
    if guided:
        model_input = torch.cat([model_input, model_input])
        timesteps = torch.cat([timesteps, timesteps])
        embeds = torch.cat([cond.negative_prompt_embeds, cond.prompt_embeds])
    else:
        embeds = cond.prompt_embeds
    added = None
    if cond.time_ids is not None:
        pooled = torch.cat([cond.negative_pooled, cond.pooled]) if guided else cond.pooled
        time_ids = torch.cat([cond.time_ids, cond.time_ids]) if guided else cond.time_ids
        added = {"text_embeds": pooled, "time_ids": time_ids}
    dtype = embeds.dtype
    output = unet(model_input.to(dtype), timesteps, encoder_hidden_states=embeds, added_cond_kwargs=added,
                  return_dict=False)[0]
    if not guided:
        return output
    uncond, text = output.chunk(2)
    return uncond + guidance_scale * (text - uncond)


@dataclass
class Trajectory:
    """A recorded DDIM rollout of B samples over S steps.

    ``latents`` [B, S+1, C, h, w] float32: x_T .. x_0; ``timesteps`` [S] (long, from the scheduler's list,
    first = noisiest); ``log_probs`` [B, S] float32 (of the sampling policy, reduced by ``reduction``);
    ``cond``: the conditioning to replay each step; ``prompts``: B prompt strings; ``guidance_scale``,
    ``eta``, ``reduction``: the sampling settings.
    """

    latents: torch.Tensor
    timesteps: torch.Tensor
    log_probs: torch.Tensor
    cond: Conditioning
    prompts: list[str]
    guidance_scale: float
    eta: float
    reduction: str = "mean"

    @property
    def batch_size(self) -> int:
        return self.latents.shape[0]

    @property
    def num_steps(self) -> int:
        return self.timesteps.shape[0]

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, metadata) for safetensors: every tensor on CPU, the rest JSON-serialisable."""
        tensors = {"latents": self.latents, "timesteps": self.timesteps, "log_probs": self.log_probs}
        for f in fields(self.cond):
            value = getattr(self.cond, f.name)
            if value is not None:
                tensors[f"cond.{f.name}"] = value
        metadata = {"prompts": self.prompts, "guidance_scale": self.guidance_scale, "eta": self.eta,
                    "reduction": self.reduction}
        return {key: value.detach().cpu().contiguous() for key, value in tensors.items()}, metadata

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict) -> "Trajectory":
        """The inverse of :meth:`to_tensors`."""
        cond = Conditioning(**{f.name: tensors.get(f"cond.{f.name}") for f in fields(Conditioning)})
        return cls(latents=tensors["latents"], timesteps=tensors["timesteps"], log_probs=tensors["log_probs"],
                   cond=cond, prompts=list(metadata["prompts"]), guidance_scale=float(metadata["guidance_scale"]),
                   eta=float(metadata["eta"]), reduction=metadata["reduction"])

    @classmethod
    def concat(cls, trajectories: list["Trajectory"]) -> "Trajectory":
        """Trajectories of the same settings stacked along the batch."""
        first = trajectories[0]
        cond = Conditioning(**{f.name: None if getattr(first.cond, f.name) is None else
                               torch.cat([getattr(t.cond, f.name) for t in trajectories]) for f in fields(Conditioning)})
        return replace(first, latents=torch.cat([t.latents for t in trajectories]),
                       log_probs=torch.cat([t.log_probs for t in trajectories]), cond=cond,
                       prompts=[p for t in trajectories for p in t.prompts])

    def select(self, rows) -> "Trajectory":
        """Some samples of the trajectory (``rows``: index list, slice or bool mask over B)."""
        prompts = [self.prompts[i] for i in torch.arange(self.batch_size)[rows].tolist()]
        return replace(self, latents=self.latents[rows], log_probs=self.log_probs[rows],
                       cond=self.cond.select(rows), prompts=prompts)


def step_log_prob(unet, scheduler, trajectory: Trajectory, step: int | torch.Tensor,
                  rows: torch.Tensor | None = None) -> torch.Tensor:
    """Log-prob [B'] of the recorded transition x_{t_j} -> x_{t_{j+1}} under ``unet`` (gradient flows
    into it). ``step``: one step index j for all, or [B'] per sample; ``rows``: which samples (default all).
    """
    rows = torch.arange(trajectory.batch_size) if rows is None else rows
    steps = torch.as_tensor(step).reshape(-1).expand(len(rows)).cpu()
    device = next(unet.parameters()).device
    latents = trajectory.latents[rows, steps].to(device)
    following = trajectory.latents[rows, steps + 1].to(device)
    timesteps = trajectory.timesteps[steps].to(device)
    cond = trajectory.cond.select(rows).to(device)
    output = guided_prediction(unet, latents, timesteps, cond, trajectory.guidance_scale, scheduler)
    return ddim_step_with_logprob(scheduler, output, timesteps, latents, trajectory.eta, prev_sample=following,
                                  reduction=trajectory.reduction).log_prob


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1] from pipeline latents (divided by the VAE scaling factor, decoded in
    the VAE's dtype, mapped from [-1, 1] once). Keeps the autograd graph: call under ``no_grad`` yourself
    when no gradient is wanted."""
    scaled = latents / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        scaled = scaled + shift
    images = vae.decode(scaled.to(vae.dtype), return_dict=False)[0]
    return (images.float() / 2 + 0.5).clamp(0, 1)


# Gradient windows (DRaFT, DRaFT-K, DRaFT-LV, AlignProp, ReFL) -----------------------------------------

WINDOW_METHODS = ("draft", "draft-k", "draft-lv", "alignprop", "refl")


@dataclass
class GradientWindow:
    """Which sampling steps carry gradient: ``mask`` [B, S] bool, each row a suffix of the steps (from a
    start step to the last one run), and ``stop_step``: the index of the last step run (S - 1, or
    ReFL's early stop, whose predicted x_0 is the result)."""

    mask: torch.Tensor
    stop_step: int


def gradient_window(method: str, num_steps: int, batch_size: int, k: int = 1, generator: torch.Generator | None = None,
                    refl_range: tuple[int, int] | None = None) -> GradientWindow:
    """The gradient window of one batch for a direct-reward ``method``.

    ``draft``: every step; ``draft-k``: the last ``k``; ``draft-lv``: the last step (the re-noised copies
    are the trainer's); ``alignprop``: per sample the last k' steps, k' uniform in 1..``k``;
    ``refl``: one step s drawn uniformly from ``refl_range`` (step indices, inclusive; default the
    last quarter), sampling stops there and its predicted x_0 is decoded.
    """
    if method not in WINDOW_METHODS:
        raise ValueError(f"method must be one of {WINDOW_METHODS}, got {method!r}")
    if num_steps < 1 or batch_size < 1:
        raise ValueError(f"num_steps and batch_size must be >= 1, got {num_steps} and {batch_size}")
    if method in ("draft-k", "alignprop") and not 1 <= k <= num_steps:
        raise ValueError(f"{method} needs 1 <= k <= num_steps ({num_steps}), got k={k}")
    positions = torch.arange(num_steps)
    stop = num_steps - 1
    if method == "draft":
        starts = torch.zeros(batch_size, dtype=torch.long)
    elif method == "draft-k":
        starts = torch.full((batch_size,), num_steps - k)
    elif method == "draft-lv":
        starts = torch.full((batch_size,), num_steps - 1)
    elif method == "alignprop":
        starts = num_steps - torch.randint(1, k + 1, (batch_size,), generator=generator)
    else:
        low, high = refl_range if refl_range is not None else (num_steps - max(1, num_steps // 4), num_steps - 1)
        if not 0 <= low <= high < num_steps:
            raise ValueError(f"refl_range must satisfy 0 <= low <= high < num_steps ({num_steps}), got {refl_range}")
        stop = int(torch.randint(low, high + 1, (1,), generator=generator))
        starts = torch.full((batch_size,), stop)
    mask = (positions[None, :] >= starts[:, None]) & (positions[None, :] <= stop)
    return GradientWindow(mask=mask, stop_step=stop)


@dataclass
class WindowSample:
    """The result of :func:`sample_with_gradient_window`: ``latents`` [B, C, h, w] float32 (x_0, or the
    predicted x_0 of the stop step for ReFL) with gradient for every sample whose window is non-empty;
    ``kl`` [B]: mean over the sample's gradient steps of the mean squared difference between the
    policy's and the reference's guided predictions (zeros without a reference)."""

    latents: torch.Tensor
    kl: torch.Tensor


def sample_with_gradient_window(unet, scheduler, latents: torch.Tensor, cond: Conditioning, guidance_scale: float,
                                window: GradientWindow, eta: float = 0.0, generator: torch.Generator | None = None,
                                checkpoint: bool = True, reference=None, return_predicted_x0: bool = False
                                ) -> WindowSample:
    """DDIM sampling from x_T ``latents`` [B, C, h, w] over ``scheduler.timesteps`` with gradient only
    inside ``window``; guidance batched into one UNet call per step.

    Steps outside every sample's window run under ``no_grad``; a step inside some window runs with
    gradient (each such step under activation checkpointing when ``checkpoint``), and samples outside
    their window at that step are detached. ``reference``: a callable returning a context manager that
    yields the reference UNet (for the KL term), or None. ``return_predicted_x0``: return the stop step's
    predicted x_0 instead of its x_{t-1} (ReFL).
    """
    if window.mask.shape != (latents.shape[0], len(scheduler.timesteps)):
        raise ValueError(f"window mask {tuple(window.mask.shape)} must be [batch, steps] = "
                         f"[{latents.shape[0]}, {len(scheduler.timesteps)}]")
    mask = window.mask.to(latents.device)
    x = latents.float()
    kl = torch.zeros(latents.shape[0], device=latents.device)
    steps_with_grad = mask.sum(dim=1).clamp(min=1)
    predicted = x
    for index, timestep in enumerate(scheduler.timesteps[:window.stop_step + 1]):
        noise = None
        if eta > 0:
            from diffusers.utils.torch_utils import randn_tensor

            noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)

        def step(current: torch.Tensor, timestep=timestep, noise=noise):
            output = guided_prediction(unet, current, timestep, cond, guidance_scale, scheduler)
            following, x0 = ddim_step(scheduler, output, timestep, current, eta, noise=noise)
            return following, x0, output

        rows = mask[:, index]
        if not rows.any():
            with torch.no_grad():
                x, predicted, _ = step(x)
            continue
        if checkpoint and torch.is_grad_enabled():
            following, x0, output = torch.utils.checkpoint.checkpoint(step, x, use_reentrant=False)
        else:
            following, x0, output = step(x)
        if reference is not None:
            with torch.no_grad(), reference() as reference_unet:
                reference_output = guided_prediction(reference_unet, x.detach(), timestep, cond, guidance_scale,
                                                     scheduler)
            squared = ((output.float() - reference_output.float()) ** 2).mean(dim=tuple(range(1, output.dim())))
            kl = kl + torch.where(rows, squared, torch.zeros_like(squared)) / steps_with_grad
        keep = rows.view(-1, 1, 1, 1)
        x = torch.where(keep, following, following.detach())
        predicted = torch.where(keep, x0, x0.detach())
    return WindowSample(latents=predicted if return_predicted_x0 else x, kl=kl)
