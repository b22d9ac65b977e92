"""A UNet2DConditionModel that knows where it is: a learned absolute-position embedding after conv_in.

SD's UNet is convolutional and its attention layers carry no positional encoding, so the only
absolute-position signal it has is the zero padding at the image border. The embedded 64x64 shapes
model (16x16 latents) trained with SD's epsilon schedule did not learn position words at all; with
this embedding and a zero-terminal-SNR schedule it did (docs/embedded-model.md). :class:`PositionalUNet2DConditionModel` adds one tensor
``conv_in.position`` [1, C, H, W] (C = ``block_out_channels[0]``, H = W = ``sample_size``),
initialised with the 2D sine-cosine table of ViT/MAE and trained with the rest, to the output of
``conv_in``; at another latent size it is resized bilinearly. Everything else is the stock
UNet2DConditionModel, so pipelines, LoRA (peft), attention processors and gradient checkpointing
work unchanged. ``save_pretrained`` records this module in ``model_index.json``; diffusers imports no
module a folder names, so ``import diffalign.unets`` (done by diffalign's loaders) must come before
``StableDiffusionPipeline.from_pretrained`` on such a folder.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import ModelMixin, UNet2DConditionModel
from diffusers.models.embeddings import get_2d_sincos_pos_embed

# diffusers' pipeline loader finds a component's load method by looking its base classes up in the
# component's module (``model_index.json`` names this one), so ModelMixin is exported here.
__all__ = ["ModelMixin", "PositionalConv2d", "PositionalUNet2DConditionModel", "load_unet"]


class PositionalConv2d(torch.nn.Conv2d):
    """A Conv2d whose output [B, C, h, w] gets ``position`` [1, C, H, W] added (resized to h x w if needed)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int, grid_size: int):
        super().__init__(in_channels, out_channels, kernel_size=kernel_size, padding=padding)
        table = get_2d_sincos_pos_embed(out_channels, grid_size, output_type="pt")  # [H*W, C] float64, in [-1, 1]
        self.position = torch.nn.Parameter(table.T.reshape(1, out_channels, grid_size, grid_size).float().contiguous())

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        hidden = super().forward(sample)
        position = self.position.to(hidden.dtype)
        if position.shape[-2:] != hidden.shape[-2:]:
            position = F.interpolate(position, size=hidden.shape[-2:], mode="bilinear", align_corners=False)
        return hidden + position


class PositionalUNet2DConditionModel(UNet2DConditionModel):
    """UNet2DConditionModel (same config, same forward) plus ``conv_in.position``; see the module docstring."""

    @functools.wraps(UNet2DConditionModel.__init__)
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        conv = self.conv_in
        if not isinstance(self.config.sample_size, int):
            raise ValueError(f"PositionalUNet2DConditionModel needs a square int sample_size (the latent side), "
                             f"got {self.config.sample_size!r}")
        self.conv_in = PositionalConv2d(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.padding[0],
                                        self.config.sample_size)


UNET_CLASSES = {cls.__name__: cls for cls in (UNet2DConditionModel, PositionalUNet2DConditionModel)}


def load_unet(source: str | Path, **kwargs) -> UNet2DConditionModel:
    """``from_pretrained`` with the class the saved config names (``_class_name``): a fine-tuned or
    pretrained :class:`PositionalUNet2DConditionModel` keeps its position embedding; any other name
    loads as the stock UNet2DConditionModel. ``kwargs`` go to ``from_pretrained`` (subfolder, revision,
    variant, torch_dtype, ...); those that say where the files are also go to ``load_config``."""
    config_keys = ("subfolder", "revision", "cache_dir", "local_files_only", "token")
    config = UNet2DConditionModel.load_config(source, **{key: kwargs[key] for key in config_keys if key in kwargs})
    return UNET_CLASSES.get(config.get("_class_name"), UNet2DConditionModel).from_pretrained(source, **kwargs)
