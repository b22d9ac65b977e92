"""Step time and peak memory of direct-reward training steps vs gradient steps K and attention backend.

Random weights from an architecture config in assets/models (tiny-sd, tiny-sdxl, sd15-arch,
sdxl-arch) and a tiny random differentiable scorer (the LAION-aesthetic architecture with tiny CLIP
weights), so it runs offline. One step = DDIM sampling of ``--batch-size`` prompts over
``--sampling-steps`` steps with gradient through the last K of them (DRaFT-K; K = all is DRaFT),
VAE decode with gradient, reward, backward and an optimizer step on LoRA weights. The first
``--warmup`` steps are not timed; peak memory is torch.cuda.max_memory_allocated (GPU only).

    python scripts/benchmark_trajectory.py --model tiny-sd --resolution 64 --k 1,2,all       # CPU
    python scripts/benchmark_trajectory.py --model sdxl-arch --resolution 1024 --k 1,2,4,10 \\
        --attention sdpa,xformers --mixed-precision bf16 --gradient-checkpointing --json sdxl.json   # GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from diffalign.config import RewardRunConfig, load_config
from diffalign.tiny import build_random_pipeline, build_random_scorer, pipeline_config_dir
from diffalign.training.reward import RewardTrainer


def measure(args, pipeline_dir: str, scorer: str, prompts: Path, work: Path, k: str, attention: str) -> dict:
    """One configuration: mean seconds per timed step and peak GPU memory."""
    steps = args.sampling_steps if k == "all" else int(k)
    overrides = [f"model.pretrained={pipeline_dir}", f"prompts.train=jsonl:{prompts}", "prompts.held_out=''",
                 f"output_dir={work / f'run-{attention}-{k}'}", f"reward.scorer={scorer}",
                 "reward.method=draft" if k == "all" else "reward.method=draft-k", f"reward.k={steps}",
                 f"sampling.num_inference_steps={args.sampling_steps}", f"sampling.height={args.resolution}",
                 f"sampling.width={args.resolution}", f"train.batch_size={args.batch_size}",
                 f"train.max_steps={args.warmup + args.steps}", "train.learning_rate=1e-6", "logging.every=1",
                 "logging.tracker=none", "checkpoint.every=0", f"model.mixed_precision={args.mixed_precision}",
                 f"model.attention={attention}", f"model.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
                 f"lora.rank={args.lora_rank}"]
    result = {"k": k, "attention": attention}
    try:
        trainer = RewardTrainer(load_config(None, overrides, cls=RewardRunConfig))
        trainer.setup()
    except (ValueError, ImportError, RuntimeError) as error:
        return dict(result, error=str(error).splitlines()[0])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.run_steps()
    timed = [row for row in trainer.history if "samples_per_s" in row][args.warmup:]
    seconds = [args.batch_size / row["samples_per_s"] for row in timed]
    result.update(seconds_per_step=statistics.mean(seconds), samples_per_s=args.batch_size / statistics.mean(seconds),
                  attention_used=trainer.attention)
    if torch.cuda.is_available():
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-sd", help="tiny-sd, tiny-sdxl, sd15-arch or sdxl-arch")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--sampling-steps", type=int, default=20)
    parser.add_argument("--k", default="1,2,all", help="gradient steps to compare (comma list; all = DRaFT)")
    parser.add_argument("--attention", default="sdpa", help="comma list of backends: sdpa, xformers")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per configuration")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--mixed-precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        pipeline_dir = build_random_pipeline(pipeline_config_dir(args.model), work / "model", seed=0)
        scorer = build_random_scorer("aesthetic", work / "scorer", seed=0)
        prompts = work / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": f"a synthetic scene number {i}"}) + "\n" for i in range(16)))
        results = [measure(args, pipeline_dir, scorer, prompts, work, k, attention)
                   for attention in args.attention.split(",") for k in args.k.split(",")]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    report = {"device": device, "settings": vars(args), "results": results}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
