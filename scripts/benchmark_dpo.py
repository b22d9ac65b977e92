"""Throughput (pairs/s) and peak memory of Diffusion-DPO training steps, with and without the cache.

Random weights from an architecture config in assets/models (tiny-sd, tiny-sdxl, sd15-arch,
sdxl-arch) and synthetic image pairs, so it runs offline. One "pair" = one winner and one loser
image; a step = one optimizer step over ``--batch-size`` pairs (no accumulation). The first
``--warmup`` steps are not timed. "cache off" encodes both images with the VAE and the prompt with the
text encoder(s) every step, as the public scripts do; "cache on" trains from pre-computed latents and
text embeddings (the cache build itself is timed separately).

    python scripts/benchmark_dpo.py --model tiny-sd --resolution 64 --batch-size 4      # CPU
    python scripts/benchmark_dpo.py --model sdxl-arch --resolution 1024 --batch-size 1 \\
        --mixed-precision bf16 --gradient-checkpointing                                   # GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffalign.config import load_config
from diffalign.tiny import build_random_pipeline, pipeline_config_dir
from diffalign.training import DPOTrainer


def synthetic_pairs(folder: Path, count: int, resolution: int, seed: int = 0) -> Path:
    """``count`` pairs of smooth random RGB images (compress well as PNG) in the JSONL format."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        names = []
        for side in (0, 1):
            coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize((resolution, resolution), Image.BICUBIC)
            name = f"images/{i:05d}_{side}.png"
            image.save(folder / name)
            names.append(name)
        rows.append({"caption": f"a synthetic scene number {i}", "image_0": names[0], "image_1": names[1],
                     "label_0": float(i % 2)})
    path = folder / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def run(args, pipeline_dir: Path, data: Path, work: Path, cache: bool) -> dict:
    steps = args.warmup + args.steps
    overrides = [f"model.pretrained={pipeline_dir}", f"data.path={data}", "data.format=jsonl",
                 f"data.resolution={args.resolution}", f"output_dir={work / ('run-cache' if cache else 'run')}",
                 f"cache.enabled={str(cache).lower()}", f"cache.dir={work / 'cache'}", "cache.dtype=bfloat16",
                 f"train.batch_size={args.batch_size}", f"train.max_steps={steps}", "train.learning_rate=1e-6",
                 "logging.every=1", "logging.tracker=none", "checkpoint.every=0",
                 f"model.mixed_precision={args.mixed_precision}", f"model.attention={args.attention}",
                 f"model.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
                 f"lora.enabled={str(args.lora_rank > 0).lower()}", f"lora.rank={max(args.lora_rank, 1)}"]
    config = load_config(None, overrides)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = DPOTrainer(config)
    started = time.perf_counter()
    trainer.setup()
    setup_s = time.perf_counter() - started
    trainer.run_steps()
    rates = [row["pairs_per_s"] for row in trainer.history[args.warmup:]]
    result = {
        "cache": cache, "attention": trainer.attention, "setup_s (incl. cache build)": round(setup_s, 1),
        "pairs_per_s": round(statistics.median(rates), 3),
        "step_s": round(args.batch_size / statistics.median(rates), 3),
        "final_loss": round(trainer.history[-1]["loss"], 4),
    }
    if torch.cuda.is_available():
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-sd", choices=["tiny-sd", "tiny-sdxl", "sd15-arch", "sdxl-arch"])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--lora-rank", type=int, default=8, help="0 = full fine-tune (frozen reference copy)")
    parser.add_argument("--mixed-precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--attention", default="auto", choices=["auto", "sdpa", "xformers"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--cache", default="both", choices=["both", "on", "off"])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="diffalign-bench-"))
    full_size = not args.model.startswith("tiny")
    pipeline_dir = build_random_pipeline(pipeline_config_dir(args.model), work / "model",
                                         dtype=torch.bfloat16 if full_size else torch.float32,
                                         device="cuda" if torch.cuda.is_available() else "cpu")
    data = synthetic_pairs(work / "data", (args.warmup + args.steps) * args.batch_size, args.resolution)
    modes = {"both": [False, True], "on": [True], "off": [False]}[args.cache]
    results = [run(args, pipeline_dir, data, work, cache) for cache in modes]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    report = {"model": args.model, "resolution": args.resolution, "batch_size": args.batch_size,
              "lora_rank": args.lora_rank, "mixed_precision": args.mixed_precision,
              "gradient_checkpointing": args.gradient_checkpointing, "device": device,
              "torch": torch.__version__, "results": results}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
