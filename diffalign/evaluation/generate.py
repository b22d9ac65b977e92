"""Generate N images per prompt of a prompt set into a run folder, with fixed, recorded seeds.

Run folder layout (read by scoring, comparison and reports):

    RUN/run.json         name, model, lora, unet, prompts (spec), dtype and the GenerationSettings fields
    RUN/manifest.jsonl   one row per image: image, prompt_id, prompt, category, sample, seed
    RUN/images/<prompt_id>_<sample:02d>.png

Seeds depend only on (base seed, prompt id, sample index) — not on the model, the batch size or
which other prompts are generated — so two models given the same settings get the same initial
noise for every image and can be compared pairwise. Generation is resumable: existing images are
skipped; images are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from diffalign.evaluation.prompts import PromptSet

SCHEDULERS = ("default", "ddim", "euler", "euler-ancestral", "dpmpp-2m")


class GenerationError(ValueError):
    """Generation settings that conflict with an existing run folder, or an unusable model."""


@dataclass
class GenerationSettings:
    """How images are sampled. ``height``/``width`` None = the pipeline's default resolution.

    Protocol defaults from the literature: 4 images per prompt, CFG 7.5 for SD 1.x, 5.0 for SDXL.
    """

    images_per_prompt: int = 4
    seed: int = 0
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    height: int | None = None
    width: int | None = None
    negative_prompt: str = ""
    scheduler: str = "default"
    batch_size: int = 4

    def __post_init__(self):
        if self.images_per_prompt < 1 or self.batch_size < 1 or self.num_inference_steps < 1:
            raise GenerationError("images_per_prompt, batch_size and num_inference_steps must be >= 1")
        if self.scheduler not in SCHEDULERS:
            raise GenerationError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")


def image_seed(seed: int, prompt_id: str, sample: int) -> int:
    """The seed of one image: a hash of (seed, prompt id, sample), in [0, 2**31)."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}:{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def image_path(prompt_id: str, sample: int) -> str:
    """Path of an image relative to the run folder (prompt ids with '/' make subfolders)."""
    return f"images/{prompt_id}_{sample:02d}.png"


def manifest_rows(prompt_set: PromptSet, settings: GenerationSettings) -> list[dict]:
    """One row per image to generate, in prompt-set order then sample order."""
    return [{"image": image_path(record.id, k), "prompt_id": record.id, "prompt": record.text,
             "category": record.category, "sample": k, "seed": image_seed(settings.seed, record.id, k)}
            for record in prompt_set for k in range(settings.images_per_prompt)]


def load_eval_pipeline(model: str, lora: str | None = None, unet: str | None = None, dtype: str = "fp32",
                       device: str | None = None, attention: str = "auto", scheduler: str = "default"):
    """A diffusers text-to-image pipeline for evaluation: base ``model`` (Hub id or folder), an
    optional LoRA (``load_lora_weights``) or a fully fine-tuned ``unet`` folder, safety checker off."""
    from diffusers import DiffusionPipeline

    from diffalign.models import DTYPES, ModelLoadError, resolve_attention_backend, set_attention_backend
    from diffalign.unets import load_unet

    torch_dtype = DTYPES[dtype]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        has_checker = "safety_checker" in DiffusionPipeline.load_config(model)
        extra = {"safety_checker": None, "requires_safety_checker": False} if has_checker else {}
        pipeline = DiffusionPipeline.from_pretrained(model, torch_dtype=torch_dtype, **extra)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"Could not load the pipeline {model!r}: {error}. Pass a local diffusers folder or a "
                             "Hub id available offline (huggingface-cli download ... --local-dir DIR).") from error
    if unet:
        pipeline.unet = load_unet(unet, torch_dtype=torch_dtype)
    if lora:
        pipeline.load_lora_weights(lora)
    pipeline.scheduler = _scheduler(pipeline.scheduler, scheduler)
    set_attention_backend(pipeline.unet, resolve_attention_backend(attention, device))
    return pipeline.to(device)


def _scheduler(current, name: str):
    from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                           EulerDiscreteScheduler)

    classes = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler,
               "euler-ancestral": EulerAncestralDiscreteScheduler, "dpmpp-2m": DPMSolverMultistepScheduler}
    return current if name == "default" else classes[name].from_config(current.config)


def generate_images(pipeline, prompt_set: PromptSet, out_dir: str | Path, settings: GenerationSettings,
                    run_info: dict | None = None, progress: bool = True) -> Path:
    """Generate every missing image of the run into ``out_dir``; returns ``out_dir``.

    ``run_info`` (model, lora, prompts spec, dtype, name) is stored in run.json with the
    settings. Re-running with the same settings resumes; different settings are an error.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = manifest_rows(prompt_set, settings)
    run = {**(run_info or {}), "prompt_set": prompt_set.name, "n_prompts": len(prompt_set), **asdict(settings)}
    run.setdefault("name", out_dir.resolve().name)
    _check_or_write_run(out_dir, run, rows)
    todo = [row for row in rows if not (out_dir / row["image"]).is_file()]
    pipeline.set_progress_bar_config(disable=True)
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc="generating", unit="img", disable=not progress)
    for start in range(0, len(todo), settings.batch_size):
        batch = todo[start:start + settings.batch_size]
        images = pipeline(prompt=[row["prompt"] for row in batch],
                          negative_prompt=[settings.negative_prompt] * len(batch) if settings.negative_prompt else None,
                          num_inference_steps=settings.num_inference_steps, guidance_scale=settings.guidance_scale,
                          height=settings.height, width=settings.width,
                          generator=[torch.Generator().manual_seed(row["seed"]) for row in batch]).images
        for row, image in zip(batch, images):
            _save_atomic(image, out_dir / row["image"])
        bar.update(len(batch))
    bar.close()
    return out_dir


def _check_or_write_run(out_dir: Path, run: dict, rows: list[dict]) -> None:
    run_file, manifest = out_dir / "run.json", out_dir / "manifest.jsonl"
    if run_file.is_file():
        before, now = _identity(json.loads(run_file.read_text())), _identity(run)
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        if changed:
            details = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed)
            raise GenerationError(f"{out_dir} holds a run generated with different settings ({details}); "
                                  "use a new output folder or delete the old one.")
    write_text_atomic(run_file, json.dumps(run, indent=2) + "\n")
    write_text_atomic(manifest, "".join(json.dumps(row) + "\n" for row in rows))


def _identity(run: dict) -> dict:
    """What determines a run's images: model, LoRA, UNet, prompts and sampling settings (not batch size)."""
    keys = [f.name for f in fields(GenerationSettings) if f.name != "batch_size"]
    return {k: run.get(k) for k in (*keys, "prompt_set", "n_prompts", "model", "lora", "unet")}


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _save_atomic(image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
