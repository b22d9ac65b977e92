"""Pieces shared by the online trainers (direct reward, D3PO): the policy set-up, held-out evaluation with
fixed seeds, and the metrics log. Each trainer keeps its own loop."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed

from diffalign.models import (DTYPES, Components, Reference, add_lora, freeze_and_cast, load_components,
                              resolve_attention_backend, set_attention_backend)
from diffalign.sampling import GradientWindow, decode_latents, sample_with_gradient_window
from diffalign.training.checkpoint import CheckpointManager, register_trainable_hooks
from diffalign.training.optim import build_lr_scheduler, build_optimizer


def make_accelerator(config, gradient_accumulation_steps: int = 1) -> Accelerator:
    """The run's Accelerator from ``config.model.mixed_precision`` and ``config.logging``."""
    tracker = None if config.logging.tracker == "none" else config.logging.tracker
    return Accelerator(
        mixed_precision="no" if config.model.mixed_precision == "fp32" else config.model.mixed_precision,
        log_with=tracker, gradient_accumulation_steps=gradient_accumulation_steps,
        project_config=ProjectConfiguration(project_dir=config.output_dir,
                                            logging_dir=str(Path(config.output_dir) / "logs")))


def build_trajectory_pipeline(components: Components, source: str):
    """A diffalign pipeline (SD or SDXL) around loaded components, with the model's own DDIM scheduler
    configuration (``set_alpha_to_one``, spacing and offset as the model ships them)."""
    from diffusers import DDIMScheduler

    from diffalign.pipelines import DiffAlignStableDiffusionPipeline, DiffAlignStableDiffusionXLPipeline

    scheduler = DDIMScheduler.from_pretrained(source, subfolder="scheduler")
    encoders, tokenizers = components.text_encoders, components.tokenizers
    if components.is_sdxl:
        pipeline = DiffAlignStableDiffusionXLPipeline(
            vae=components.vae, text_encoder=encoders[0], text_encoder_2=encoders[1], tokenizer=tokenizers[0],
            tokenizer_2=tokenizers[1], unet=components.unet, scheduler=scheduler)
    else:
        pipeline = DiffAlignStableDiffusionPipeline(
            vae=components.vae, text_encoder=encoders[0], tokenizer=tokenizers[0], unet=components.unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def position_generator(seed: int, process_index: int, position: int, salt: int) -> torch.Generator:
    """A CPU generator fixed by (run seed, process, step position, purpose ``salt``): the online trainers draw
    noise, windows and timestep subsets from it, so a resumed run draws what the uninterrupted one did."""
    value = ((seed * 1_000_003 + process_index) * 1_000_003 + position) * 7 + salt
    return torch.Generator().manual_seed(value % (2 ** 63))


@dataclass
class Policy:
    """The trained UNet (accelerate-prepared), its optimizer and schedule, the frozen reference and the
    pipeline (around the unwrapped UNet) used for conditioning, scheduling and decoding."""

    components: Components
    unet: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    trainable_params: list[torch.nn.Parameter]
    reference: Reference
    pipeline: object
    attention: str
    weight_dtype: torch.dtype


def prepare_policy(config, accelerator: Accelerator, components: Components | None = None) -> Policy:
    """Load (or take) components, freeze and cast them, add LoRA (or unfreeze the UNet), build the
    optimizer, schedule and reference, prepare with accelerate and register checkpoint hooks."""
    device = accelerator.device
    set_seed(config.train.seed)
    weight_dtype = DTYPES[config.model.mixed_precision]
    vae_dtype = weight_dtype if config.model.vae_dtype == "weight" else DTYPES[config.model.vae_dtype]
    components = components if components is not None else load_components(config.model)
    freeze_and_cast(components, weight_dtype, vae_dtype)
    attention = resolve_attention_backend(config.model.attention, device)
    set_attention_backend(components.unet, attention)
    unet = components.unet
    if config.model.gradient_checkpointing:
        components.vae.enable_gradient_checkpointing()
    if config.lora.enabled:
        params = add_lora(unet, config.lora)
    else:
        unet.requires_grad_(True)
        params = list(unet.parameters())
    reference = Reference(unet, use_lora=config.lora.enabled, weight_dtype=weight_dtype)
    pipeline = build_trajectory_pipeline(components, config.model.pretrained)
    optimizer = build_optimizer(config.train, params, config.train.learning_rate)
    lr_scheduler = build_lr_scheduler(config.train, optimizer, accelerator.num_processes)
    prepared, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    register_trainable_hooks(accelerator, lambda: accelerator.unwrap_model(prepared))
    for module in [*components.text_encoders, components.vae]:
        module.to(device)
    if not config.lora.enabled:
        reference.unet.to(device)
    return Policy(components, prepared, optimizer, lr_scheduler, params, reference, pipeline, attention, weight_dtype)


@torch.no_grad()
def evaluate_held_out(pipeline, unet, texts: list[str], scorers: dict, sampling, batch_size: int, seed: int,
                      autocast) -> dict[str, float]:
    """Mean score per scorer (``eval/<name>``) of one image per held-out prompt, prompt i drawn from
    seed ``seed + i`` with DDIM (``sampling`` settings), scored on the official PIL path."""
    totals: dict[str, float] = {}
    size = pipeline._size(sampling.height, sampling.width)
    steps = sampling.num_inference_steps
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        cond = pipeline.conditioning(chunk, None, sampling.guidance_scale, *size)
        pipeline.scheduler.set_timesteps(steps, device=unet.device)
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        x_T = pipeline.initial_latents(len(chunk), *size, generators, cond.prompt_embeds.dtype)
        no_gradient = GradientWindow(torch.zeros(len(chunk), steps, dtype=torch.bool), steps - 1)
        with autocast():
            latents = sample_with_gradient_window(unet, pipeline.scheduler, x_T, cond, sampling.guidance_scale,
                                                  no_gradient, sampling.eta,
                                                  torch.Generator().manual_seed(seed + start)).latents
        images = decode_latents(pipeline.vae, latents)
        for name, scorer in scorers.items():
            totals[f"eval/{name}"] = totals.get(f"eval/{name}", 0.0) + scorer(images, chunk, path="pil").sum().item()
    return {key: value / len(texts) for key, value in totals.items()}


class MetricsLog:
    """Rows of metrics: kept in memory, appended to ``<output_dir>/metrics.jsonl`` by the main process and
    sent to the tracker. On resume, rows up to the resumed step are read back."""

    def __init__(self, accelerator: Accelerator, output_dir: str | Path):
        self.accelerator = accelerator
        self.path = Path(output_dir) / "metrics.jsonl"
        self.rows: list[dict] = []

    def resume(self, step: int) -> None:
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()] \
            if self.path.is_file() else []
        self.rows = [row for row in rows if row["step"] <= step]

    def reduce(self, window: list[dict[str, torch.Tensor]], step: int, **extra) -> dict:
        """The mean of each metric over ``window`` (micro-steps) and processes, plus ``extra``; written."""
        accelerator = self.accelerator
        row: dict = {"step": step}
        for key in sorted({k for metrics in window for k in metrics}):
            value = torch.stack([m[key].float() for m in window if key in m]).mean()
            row[key] = accelerator.reduce(value.to(accelerator.device), reduction="mean").item()
        row.update(extra)
        if torch.cuda.is_available():
            row["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        self.write(row)
        return row

    def write_eval(self, step: int, evaluation: dict[str, float]) -> None:
        """A row of held-out scores (nothing when there are none)."""
        if evaluation:
            self.write({"step": step, **evaluation})

    def write(self, row: dict) -> None:
        self.rows.append(row)
        if self.accelerator.is_main_process:
            with self.path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
        if self.accelerator.log_with:
            self.accelerator.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=row["step"])


def write_run_files(config, conventions: dict, accelerator: Accelerator) -> None:
    """``config.yaml`` and ``conventions.json`` in the output folder (main process)."""
    import yaml

    from diffalign.config import to_dict

    if accelerator.is_main_process:
        folder = Path(config.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        (folder / "conventions.json").write_text(json.dumps(conventions, indent=2))


def checkpoint_manager(config) -> CheckpointManager:
    return CheckpointManager(config.output_dir, config.checkpoint.keep_last)


def train_from_command_line(description: str, config_class: type, train, argv: list[str] | None = None,
                            fixed_overrides: list[str] | None = None) -> dict:
    """The body of the scripts/train_*.py entry points: ``--config FILE [key=value ...]`` plus the script's
    ``fixed_overrides`` (e.g. ``train.objective=rank``) -> one run of ``train(config)``; returns the final
    metrics."""
    import argparse
    import sys

    from accelerate import PartialState

    from diffalign.config import load_config

    caller = sys.modules.get("__main__")
    parser = argparse.ArgumentParser(description=description, epilog=getattr(caller, "__doc__", None),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (assets/configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)
    final = train(load_config(args.config, [*(fixed_overrides or []), *args.overrides], cls=config_class,
                              num_processes=PartialState().num_processes))
    if PartialState().is_main_process:
        print(f"done: {final}")
    return final


def train_to_end(trainer, conventions: dict) -> dict:
    """The shared ``train()`` of the online trainers: run files, held-out scores at the start, the loop,
    a last checkpoint, held-out scores at the end, final weights and ``summary.json``; returns the final
    metrics. ``trainer`` has ``config``, ``accelerator``, ``log``, ``global_step``, ``components``,
    ``unet``, ``attention`` and ``describe``, ``evaluate``, ``run_steps``, ``save_checkpoint``."""
    from diffalign.training.outputs import save_final_weights

    config, accelerator = trainer.config, trainer.accelerator
    write_run_files(config, conventions, accelerator)
    if accelerator.log_with:
        accelerator.init_trackers(config.logging.project)
    accelerator.print(trainer.describe())
    if trainer.global_step == 0:
        trainer.log.write_eval(0, trainer.evaluate())
    trainer.run_steps()
    if not config.checkpoint.every or trainer.global_step % config.checkpoint.every:
        trainer.save_checkpoint()
    final = dict(trainer.log.rows[-1]) if trainer.log.rows else {}
    evaluation = trainer.evaluate()
    trainer.log.write_eval(trainer.global_step, evaluation)
    final.update(evaluation)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final["weights"] = str(save_final_weights(trainer.components, accelerator.unwrap_model(trainer.unet), config))
        (Path(config.output_dir) / "summary.json").write_text(json.dumps(
            {"final": final, "attention": trainer.attention, "conventions": conventions}, indent=2))
    accelerator.end_training()
    return final
