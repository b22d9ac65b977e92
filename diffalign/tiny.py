"""Tiny pipelines with seeded random weights, built from the config folders in assets/models/.

Used by the demo, the tests and CPU benchmarks: the result is a complete diffusers pipeline folder
saved with ``save_pretrained`` (safetensors), so it loads through the same ``from_pretrained``
code path as a real SD or SDXL checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from diffalign.paths import asset

_MODELS = {
    "UNet2DConditionModel": lambda folder: UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder)),
    "AutoencoderKL": lambda folder: AutoencoderKL.from_config(AutoencoderKL.load_config(folder)),
    "CLIPTextModel": lambda folder: CLIPTextModel(CLIPTextConfig.from_pretrained(folder)),
    "CLIPTextModelWithProjection": lambda folder: CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder)),
}


def tiny_config_dir(name: str = "tiny-sd") -> Path:
    """Config folder of a shipped tiny pipeline: 'tiny-sd' or 'tiny-sdxl'."""
    return asset("models", name)


def build_random_pipeline(config_dir: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """Instantiate every model of a pipeline config folder with seeded random weights and save it.

    Tokenizer and scheduler folders are copied; models are saved with ``save_pretrained``.
    Returns ``out_dir``, loadable with ``DiffusionPipeline.from_pretrained(out_dir)``.
    """
    config_dir, out_dir = Path(config_dir), Path(out_dir)
    index = json.loads((config_dir / "model_index.json").read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    for name, spec in sorted(index.items()):
        if not isinstance(spec, list) or spec[1] is None:
            continue
        class_name = spec[1]
        if class_name in _MODELS:
            _MODELS[class_name](config_dir / name).save_pretrained(out_dir / name, safe_serialization=True)
        else:
            shutil.copytree(config_dir / name, out_dir / name, dirs_exist_ok=True)
    shutil.copy(config_dir / "model_index.json", out_dir / "model_index.json")
    return out_dir
