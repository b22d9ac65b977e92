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


def pipeline_config_dir(name: str = "tiny-sd") -> Path:
    """Config folder of a shipped pipeline: 'tiny-sd', 'tiny-sdxl', 'sd15-arch' or 'sdxl-arch'."""
    return asset("models", name)


def build_random_pipeline(config_dir: str | Path, out_dir: str | Path, seed: int = 0,
                          dtype: torch.dtype = torch.float32, device: str = "cpu") -> Path:
    """Instantiate every model of a pipeline config folder with seeded random weights and save it.

    Tokenizer and scheduler folders are copied; models are saved with ``save_pretrained`` in
    ``dtype`` (initialised on ``device``: 'cuda' makes full-size SDXL quick to build).
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
            with torch.device(device):
                model = _MODELS[class_name](config_dir / name)
            model.to(dtype=dtype).save_pretrained(out_dir / name, safe_serialization=True)
            del model
        else:
            shutil.copytree(config_dir / name, out_dir / name, dirs_exist_ok=True)
    shutil.copy(config_dir / "model_index.json", out_dir / "model_index.json")
    return out_dir
