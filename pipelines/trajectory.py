"""What the diffalign pipelines add to diffusers' SD and SDXL pipelines: recorded rollouts, replay of
recorded steps, and sampling with a gradient window. ``__call__`` is left exactly as upstream."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler
from tqdm.auto import tqdm

from diffalign.sampling import (REDUCTIONS, Conditioning, GradientWindow, Trajectory, WindowSample, decode_latents,
                                ddim_step_with_logprob, guided_prediction, sample_with_gradient_window, step_log_prob)


class ReplayMismatchError(RuntimeError):
    """Recomputed log-probs of recorded steps differ from the recorded ones: sampling and training disagree."""


@dataclass
class RolloutOutput:
    """``images``: as ``output_type`` asks (PIL list, numpy, [B, 3, H, W] tensor in [0, 1], or latents);
    ``trajectory``: the recorded :class:`~diffalign.sampling.Trajectory`."""

    images: object
    trajectory: Trajectory


class TrajectoryMixin:
    """Rollouts with per-step log-probs, replay and gradient-window sampling for a DDIM-scheduled pipeline.

    ``unet=`` arguments take the module to run (e.g. the accelerate-prepared, LoRA-wrapped UNet of a
    trainer); by default the pipeline's own ``self.unet``.
    """

    def conditioning(self, prompts: list[str], negative_prompt: str | list[str] | None, guidance_scale: float,
                     height: int, width: int) -> Conditioning:
        """Text (and SDXL micro-) conditioning of ``prompts``; implemented by each pipeline class."""
        raise NotImplementedError

    def _guidance(self, prompts: list[str], negative_prompt: str | list[str] | None,
                  guidance_scale: float) -> tuple[bool, list[str] | None]:
        """Whether classifier-free guidance runs (as ``__call__`` decides it) and the per-prompt negatives."""
        guided = guidance_scale > 1 and self.unet.config.time_cond_proj_dim is None
        if isinstance(negative_prompt, str):
            negative_prompt = [negative_prompt] * len(prompts)
        return guided, negative_prompt

    def _check_ddim(self) -> None:
        if not isinstance(self.scheduler, DDIMScheduler):
            raise ValueError(f"trajectory methods need a DDIM scheduler, this pipeline has "
                             f"{type(self.scheduler).__name__}: set pipe.scheduler = "
                             "DDIMScheduler.from_pretrained(<model>, subfolder='scheduler')")

    def _size(self, height: int | None, width: int | None) -> tuple[int, int]:
        default = self.unet.config.sample_size * self.vae_scale_factor
        return height or default, width or default

    def initial_latents(self, batch_size: int, height: int, width: int, generator=None, dtype=None) -> torch.Tensor:
        """x_T [B, C, h, w] drawn as ``__call__`` draws it (``prepare_latents``, scaled by init_noise_sigma)."""
        return self.prepare_latents(batch_size, self.unet.config.in_channels, height, width,
                                    dtype or self.unet.dtype, self._execution_device, generator)

    @torch.no_grad()
    def rollout(self, prompt: str | list[str], num_inference_steps: int = 20, guidance_scale: float = 5.0,
                eta: float = 1.0, generator: torch.Generator | list[torch.Generator] | None = None,
                latents: torch.Tensor | None = None, negative_prompt: str | list[str] | None = None,
                height: int | None = None, width: int | None = None, reduction: str = "mean",
                output_type: str = "pil", unet=None, progress: bool = True) -> RolloutOutput:
        """Sample with stochastic DDIM (eta > 0) and record the trajectory: x_T .. x_0, the timesteps and
        each step's log-prob under the sampling UNet. Seeds, noise order and the DDIM update are those of
        ``__call__(..., eta=eta)``, so the images match it for the same generator."""
        self._check_ddim()
        if not eta > 0:
            raise ValueError(f"a rollout records log-probs, which need eta > 0; got eta={eta}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        height, width = self._size(height, width)
        unet = unet if unet is not None else self.unet
        device = self._execution_device
        cond = self.conditioning(prompts, negative_prompt, guidance_scale, height, width)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        x = latents.to(device) if latents is not None else self.initial_latents(
            len(prompts), height, width, generator, cond.prompt_embeds.dtype)
        states, log_probs = [x.float()], []
        for timestep in tqdm(self.scheduler.timesteps, desc="rollout", disable=not progress, leave=False):
            output = guided_prediction(unet, x, timestep, cond, guidance_scale, self.scheduler)
            step = ddim_step_with_logprob(self.scheduler, output, timestep, x, eta, generator=generator,
                                          reduction=reduction)
            x = step.prev_sample.to(x.dtype)
            states.append(step.prev_sample.float())
            log_probs.append(step.log_prob)
        trajectory = Trajectory(latents=torch.stack(states, dim=1), timesteps=self.scheduler.timesteps.cpu().long(),
                                log_probs=torch.stack(log_probs, dim=1), cond=cond, prompts=prompts,
                                guidance_scale=guidance_scale, eta=eta, reduction=reduction)
        return RolloutOutput(images=self.decode(x, output_type), trajectory=trajectory)

    def decode(self, latents: torch.Tensor, output_type: str = "pil"):
        """Latents -> images as ``output_type`` (``pt``: [B, 3, H, W] in [0, 1]; ``latent``: unchanged)."""
        if output_type == "latent":
            return latents
        images = decode_latents(self.vae, latents)
        if output_type == "pt":
            return images
        return self.image_processor.postprocess(images, output_type=output_type,
                                                do_denormalize=[False] * images.shape[0])

    def replay_log_probs(self, trajectory: Trajectory, unet=None) -> torch.Tensor:
        """Log-probs [B, S] of every recorded step recomputed by ``unet`` (no gradient)."""
        self._check_ddim()
        unet = unet if unet is not None else self.unet
        self.scheduler.set_timesteps(trajectory.num_steps, device=self._execution_device)
        if not torch.equal(self.scheduler.timesteps.cpu().long(), trajectory.timesteps):
            raise ValueError("the scheduler's timesteps differ from the trajectory's: was it recorded with another "
                             "scheduler configuration?")
        with torch.no_grad():
            return torch.stack([step_log_prob(unet, self.scheduler, trajectory, step)
                                for step in range(trajectory.num_steps)], dim=1).cpu()

    def check_replay(self, trajectory: Trajectory, unet=None, atol: float = 1e-3) -> float:
        """Raise :class:`ReplayMismatchError` unless recomputed log-probs equal the recorded ones (the
        importance ratio of every step is 1 within ``atol`` in log space); returns the largest gap."""
        gap = (self.replay_log_probs(trajectory, unet) - trajectory.log_probs.cpu()).abs().max().item()
        if not gap <= atol:
            raise ReplayMismatchError(f"replayed log-probs differ from the recorded ones by up to {gap:.3g} "
                                      f"(tolerance {atol}): the training forward pass does not reproduce sampling "
                                      "(dtype, attention backend, LoRA state or conditioning differ)")
        return gap

    def sample_with_gradient(self, prompt: str | list[str], window: GradientWindow, num_inference_steps: int = 20,
                             guidance_scale: float = 5.0, eta: float = 0.0, generator=None,
                             negative_prompt: str | list[str] | None = None, height: int | None = None,
                             width: int | None = None, unet=None, checkpoint: bool = True, reference=None,
                             return_predicted_x0: bool = False, latents: torch.Tensor | None = None) -> WindowSample:
        """DDIM sampling with gradient inside ``window`` (see
        :func:`diffalign.sampling.sample_with_gradient_window`); decode with :meth:`decode` (``pt``) or
        :func:`diffalign.sampling.decode_latents` to keep the graph into the images."""
        self._check_ddim()
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        height, width = self._size(height, width)
        cond = self.conditioning(prompts, negative_prompt, guidance_scale, height, width)
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        x = latents if latents is not None else self.initial_latents(len(prompts), height, width, generator,
                                                                      cond.prompt_embeds.dtype)
        return sample_with_gradient_window(unet if unet is not None else self.unet, self.scheduler, x, cond,
                                           guidance_scale, window, eta, generator, checkpoint, reference,
                                           return_predicted_x0)
