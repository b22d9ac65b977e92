"""Stable Diffusion (1.x / 2.x) pipeline with trajectory recording and gradient-window sampling."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline

from diffalign.pipelines.trajectory import TrajectoryMixin
from diffalign.sampling import Conditioning


class DiffAlignStableDiffusionPipeline(TrajectoryMixin, StableDiffusionPipeline):
    """``StableDiffusionPipeline`` (``__call__``, ``from_pretrained``, ``load_lora_weights`` unchanged) plus
    :meth:`rollout`, :meth:`replay_log_probs`, :meth:`check_replay` and :meth:`sample_with_gradient`."""

    @torch.no_grad()
    def conditioning(self, prompts: list[str], negative_prompt: str | list[str] | None, guidance_scale: float,
                     height: int, width: int) -> Conditioning:
        guided, negative_prompt = self._guidance(prompts, negative_prompt, guidance_scale)
        embeds, negative = self.encode_prompt(prompts, self._execution_device, 1, guided, negative_prompt)
        return Conditioning(prompt_embeds=embeds, negative_prompt_embeds=negative if guided else None)
