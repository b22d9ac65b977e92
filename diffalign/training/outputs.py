"""Final weights, model card and validation images of a training run."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image

from diffalign.config import DPORunConfig, conventions, to_dict
from diffalign.models import Components, build_pipeline, lora_state_dict

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


def save_final_weights(components: Components, unet, config: DPORunConfig) -> Path:
    """LoRA -> ``<output_dir>/pytorch_lora_weights.safetensors`` (``pipe.load_lora_weights(output_dir)``);
    full fine-tune -> ``<output_dir>/unet`` (``<the UNet's class>.from_pretrained``)."""
    output_dir = Path(config.output_dir)
    if config.lora.enabled:
        pipeline_class = StableDiffusionXLPipeline if components.is_sdxl else StableDiffusionPipeline
        pipeline_class.save_lora_weights(output_dir, unet_lora_layers=lora_state_dict(unet),
                                         weight_name=LORA_WEIGHTS, safe_serialization=True)
        return output_dir / LORA_WEIGHTS
    unet.save_pretrained(output_dir / "unet", safe_serialization=True)
    return output_dir / "unet"


def write_run_config(config: DPORunConfig) -> None:
    """``config.yaml`` (the full resolved config) and ``conventions.json`` in the output folder."""
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    (output_dir / "conventions.json").write_text(json.dumps(conventions(config), indent=2))


def write_model_card(config: DPORunConfig, components: Components, data_stats: dict, metrics: dict) -> Path:
    """A short README.md: base model, data, method settings, conventions, final metrics, usage."""
    output_dir = Path(config.output_dir)
    family = "SDXL" if components.is_sdxl else "Stable Diffusion"
    pipeline = "StableDiffusionXLPipeline" if components.is_sdxl else "StableDiffusionPipeline"
    if config.lora.enabled:
        usage = (f"pipe = {pipeline}.from_pretrained(\"{config.model.pretrained}\")\n"
                 f"pipe.load_lora_weights(\"{output_dir}\")")
        weights = f"LoRA rank {config.lora.rank} on {', '.join(config.lora.target_modules)}"
    else:
        unet_class = type(components.unet)
        usage = ("" if unet_class.__module__.startswith("diffusers") else
                 f"from {unet_class.__module__} import {unet_class.__name__}\n")
        usage += (f"unet = {unet_class.__name__}.from_pretrained(\"{output_dir / 'unet'}\")\n"
                 f"pipe = {pipeline}.from_pretrained(\"{config.model.pretrained}\", unet=unet)")
        weights = "full UNet fine-tune"
    objective = "Diffusion-DPO" if config.train.objective == "dpo" else "SFT on preferred images"
    lines = [
        f"# {objective} fine-tune of {config.model.pretrained}",
        "",
        f"- base model: `{config.model.pretrained}` ({family})",
        f"- weights: {weights}",
        f"- data: `{config.data.path}` ({config.data.format}, split `{config.data.split}`): "
        + ", ".join(f"{k} {v}" for k, v in data_stats.items()),
        f"- objective: {objective}, beta {config.train.beta}, {config.train.max_steps} steps, "
        f"lr {config.train.learning_rate}, optimizer {config.train.optimizer}, resolution {config.data.resolution}",
        "",
        "## Conventions",
        "",
        *[f"- {key}: {value}" for key, value in conventions(config).items()],
        "",
        "## Final metrics",
        "",
        *[f"- {key}: {value:.6g}" if isinstance(value, float) else f"- {key}: {value}" for key, value in metrics.items()],
        "",
        "## Usage",
        "",
        "```python",
        usage,
        "```",
        "",
        "Trained with diffalign; the full configuration is in `config.yaml`.",
        "",
    ]
    path = output_dir / "README.md"
    path.write_text("\n".join(lines))
    return path


def image_grid(images: list[Image.Image], columns: int) -> Image.Image:
    """Tile equally sized images row by row."""
    width, height = images[0].size
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * width, rows * height), "white")
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * width, (i // columns) * height))
    return grid


@torch.no_grad()
def render_validation(components: Components, unet, config: DPORunConfig, autocast) -> Image.Image:
    """One image per (prompt, seed) with fixed seeds; a grid with a row per prompt."""
    validation = config.validation
    pipeline = build_pipeline(components, unet=unet)
    pipeline.set_progress_bar_config(disable=True)
    images = []
    with autocast():
        for prompt in validation.prompts:
            for seed in validation.seeds:
                generator = torch.Generator(device="cpu").manual_seed(seed)
                images.extend(pipeline(prompt, num_inference_steps=validation.num_inference_steps,
                                       guidance_scale=validation.guidance_scale, generator=generator,
                                       height=config.data.resolution, width=config.data.resolution).images)
    return image_grid(images, columns=len(validation.seeds))
