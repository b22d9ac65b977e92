"""diffusers pipeline extensions, installed as ``diffalign.pipelines``.

:class:`DiffAlignStableDiffusionPipeline` and :class:`DiffAlignStableDiffusionXLPipeline` subclass the
diffusers SD and SDXL pipelines: ``__call__``, ``from_pretrained`` and ``load_lora_weights`` behave as
upstream, and they add recorded rollouts with per-step DDIM log-probs (D3PO), replay checks, and
sampling with a gradient window (DRaFT, AlignProp, ReFL). Diffusion-DPO trains with stock pipelines,
and its LoRA output loads into a stock pipeline with ``pipe.load_lora_weights``.
"""

from diffalign.pipelines.stable_diffusion import DiffAlignStableDiffusionPipeline
from diffalign.pipelines.stable_diffusion_xl import DiffAlignStableDiffusionXLPipeline
from diffalign.pipelines.trajectory import ReplayMismatchError, RolloutOutput, TrajectoryMixin

__all__ = ["DiffAlignStableDiffusionPipeline", "DiffAlignStableDiffusionXLPipeline", "ReplayMismatchError",
           "RolloutOutput", "TrajectoryMixin"]
