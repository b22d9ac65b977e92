"""PositionalUNet2DConditionModel: what it adds, and that every loading path keeps it."""

from __future__ import annotations

import math

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from diffalign.config import ModelConfig
from diffalign.evaluation.generate import load_eval_pipeline
from diffalign.models import load_components
from diffalign.unets import PositionalConv2d, PositionalUNet2DConditionModel, load_unet


def _positional_pipeline(tiny_sd, out):
    """The tiny SD pipeline with its UNet replaced by a positional one of the same config, saved to ``out``."""
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd)
    unet = PositionalUNet2DConditionModel.from_config(pipeline.unet.config)
    pipeline.register_modules(unet=unet)
    pipeline.save_pretrained(out, safe_serialization=True)
    return unet


def test_position_table_starts_as_2d_sincos_and_breaks_translation_symmetry():
    conv = PositionalConv2d(4, 8, kernel_size=3, padding=1, grid_size=4)
    # channels 0-3: sin, sin, cos, cos of the column coordinate at 1 and 0.01 rad per unit, 4-7: the same for
    # the row; diffusers counts 16 / grid_size = 4 units per cell
    assert torch.allclose(conv.position[0, 0, 0, :], torch.sin(torch.arange(4.0) * 4))
    assert torch.allclose(conv.position[0, 4, :, 0], torch.sin(torch.arange(4.0) * 4))
    assert torch.allclose(conv.position[0, 6, 2, 3], torch.tensor(math.cos(2 * 4)))
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
    flat = torch.ones(1, 4, 4, 4)
    assert torch.equal(conv(flat), conv.position)  # a uniform input comes out different at every cell
    assert conv(torch.ones(2, 4, 8, 8)).shape == (2, 8, 8, 8)  # other latent sizes: the table is resized


def test_positional_unet_saves_and_loads_through_every_path(tiny_sd, tmp_path):
    unet = _positional_pipeline(tiny_sd, tmp_path / "pipe")
    with torch.no_grad():
        unet.conv_in.position.mul_(3)  # so that a fresh init could not pass for the saved weights
    unet.save_pretrained(tmp_path / "unet-only", safe_serialization=True)
    unet.save_pretrained(tmp_path / "pipe" / "unet", safe_serialization=True)

    loaded = [StableDiffusionPipeline.from_pretrained(tmp_path / "pipe").unet,
              load_unet(tmp_path / "unet-only"), load_unet(tmp_path / "pipe", subfolder="unet"),
              load_components(ModelConfig(pretrained=str(tmp_path / "pipe"))).unet,
              load_eval_pipeline(str(tiny_sd), unet=str(tmp_path / "unet-only"), device="cpu").unet]
    for other in loaded:
        assert type(other) is PositionalUNet2DConditionModel
        assert torch.equal(other.conv_in.position, unet.conv_in.position)
    assert type(load_unet(tiny_sd, subfolder="unet")) is UNet2DConditionModel

    sample, timestep = torch.randn(1, 4, 8, 8), torch.tensor([500])
    text = torch.randn(1, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        before = unet(sample, timestep, text).sample
        unet.conv_in.position.zero_()
        assert not torch.allclose(unet(sample, timestep, text).sample, before)  # the table is used


def test_positional_unet_is_a_unet2dconditionmodel_for_lora(tiny_sd, tmp_path):
    from diffalign.config import LoraConfig
    from diffalign.models import add_lora

    _positional_pipeline(tiny_sd, tmp_path / "pipe")
    components = load_components(ModelConfig(pretrained=str(tmp_path / "pipe")))
    parameters = add_lora(components.unet, LoraConfig(enabled=True, rank=2))
    assert parameters and all("lora" in name for name, p in components.unet.named_parameters() if p.requires_grad)
    assert not components.unet.conv_in.position.requires_grad
