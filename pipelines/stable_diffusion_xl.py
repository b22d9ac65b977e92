"""Stable Diffusion XL pipeline with trajectory recording and gradient-window sampling."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionXLPipeline

from diffalign.pipelines.trajectory import TrajectoryMixin
from diffalign.sampling import Conditioning


class DiffAlignStableDiffusionXLPipeline(TrajectoryMixin, StableDiffusionXLPipeline):
    """``StableDiffusionXLPipeline`` (``__call__``, ``from_pretrained``, ``load_lora_weights`` unchanged) plus
    :meth:`rollout`, :meth:`replay_log_probs`, :meth:`check_replay` and :meth:`sample_with_gradient`.

    Conditioning carries the pooled text embeddings and the micro-conditioning time ids
    (original size = target size = (height, width), crop (0, 0), as ``__call__``'s defaults).
    """

    @torch.no_grad()
    def conditioning(self, prompts: list[str], negative_prompt: str | list[str] | None, guidance_scale: float,
                     height: int, width: int) -> Conditioning:
        guided, negative_prompt = self._guidance(prompts, negative_prompt, guidance_scale)
        embeds, negative, pooled, negative_pooled = self.encode_prompt(
            prompt=prompts, device=self._execution_device, num_images_per_prompt=1,
            do_classifier_free_guidance=guided, negative_prompt=negative_prompt)
        projection = (int(pooled.shape[-1]) if self.text_encoder_2 is None
                      else self.text_encoder_2.config.projection_dim)
        time_ids = self._get_add_time_ids((height, width), (0, 0), (height, width), dtype=embeds.dtype,
                                          text_encoder_projection_dim=projection)
        return Conditioning(prompt_embeds=embeds, negative_prompt_embeds=negative if guided else None,
                            pooled=pooled, negative_pooled=negative_pooled if guided else None,
                            time_ids=time_ids.to(self._execution_device).repeat(len(prompts), 1))
