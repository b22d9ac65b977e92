"""Scorer throughput and peak memory: batched diffalign scorers vs a one-image-at-a-time loop.

Each scorer gets seeded random weights (tiny, or the published architecture with ``--full-size``)
saved in its real format and loaded through ``get_scorer``, so the measured path is the one users
run. The loop baseline scores one image per call and re-encodes the prompt every call, as the
official per-image packages do; the batched runs use the text cache. "load s" is the time to load
the scorer from disk once, which packages that reload weights on every call pay per call. Results go to stdout as a
markdown table and optionally to JSON.

    python scripts/benchmark_scorers.py --scorers pickscore,hpsv2.1,aesthetic,jpeg-compressibility
    python scripts/benchmark_scorers.py --full-size --scorers hpsv2.1 --device cuda --dtype bf16 \
        --batch-sizes 1,16,64 --images 256
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from datetime import date

import numpy as np
import torch
from PIL import Image

from diffalign.models import DTYPES
from diffalign.scorers import get_scorer
from diffalign.tiny import build_random_scorer


def make_images(count: int, size: int, seed: int = 0) -> list[Image.Image]:
    """Smooth random RGB images (upsampled 16x16 noise), like decoded samples rather than pixel noise."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
            for _ in range(count)]


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset; CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def benchmark(scorer, images, prompts, batch_sizes, device, path) -> list[dict]:
    rows = []
    scorer(images[:2], prompts[:2], path=path)  # warm-up (kernels, allocator)

    def loop():
        for image, prompt in zip(images, prompts):
            scorer._text_cache.clear()
            scorer([image], [prompt], path=path)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(loop, device)
    rows.append({"mode": "one-at-a-time loop", "batch_size": 1, "images_per_s": len(images) / seconds,
                 "peak_mb": peak_memory_mb(device)})
    for batch_size in batch_sizes:
        scorer._text_cache.clear()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = timed(lambda: scorer(images, prompts, path=path, batch_size=batch_size), device)
        rows.append({"mode": "batched", "batch_size": batch_size, "images_per_s": len(images) / seconds,
                     "peak_mb": peak_memory_mb(device)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scorers", default="pickscore,hpsv2.1,aesthetic,clipscore,jpeg-compressibility")
    parser.add_argument("--full-size", action="store_true", help="published architectures (ViT-H/14, ViT-L/14, ...)")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=512, help="side of the square input images")
    parser.add_argument("--prompts", type=int, default=8, help="distinct prompts, cycled over the images")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    parser.add_argument("--path", choices=["pil", "tensor"], default="pil")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    images = make_images(args.images, args.image_size)
    prompts = [f"prompt number {i % args.prompts}: a photo of a red car on a street" for i in range(args.images)]
    if args.path == "tensor":
        from diffalign.scorers import pil_to_tensor

        images = pil_to_tensor(images).to(device)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.scorers.split(","):
            spec = build_random_scorer(name, folder, full_size=args.full_size)
            start = time.perf_counter()
            scorer = get_scorer(spec, device=device, dtype=DTYPES[args.dtype])
            load_s = time.perf_counter() - start
            params = sum(p.numel() for p in scorer.parameters())
            for row in benchmark(scorer, images, prompts, batch_sizes, device, args.path):
                results.append({"scorer": name, "params_m": params / 1e6, "load_s": load_s, **row})
                print(f"{name} {row['mode']} bs={row['batch_size']}: {row['images_per_s']:.2f} img/s", flush=True)
            del scorer
            if device.type == "cuda":
                torch.cuda.empty_cache()

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"\n{date.today()} {device_name}, {args.dtype}, {'published' if args.full_size else 'tiny'} architectures, "
          f"{args.images} images of {args.image_size}px, {args.path} path\n")
    print("| scorer | params (M) | load s | mode | batch | images/s | speed-up vs loop | peak memory (MB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in results:
        loop = next(r for r in results if r["scorer"] == row["scorer"] and r["mode"] != "batched")
        print(f"| {row['scorer']} | {row['params_m']:.1f} | {row['load_s']:.1f} | {row['mode']} | {row['batch_size']} | "
              f"{row['images_per_s']:.2f} | {row['images_per_s'] / loop['images_per_s']:.1f}x | {row['peak_mb']:.0f} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"date": str(date.today()), "device": device_name, "args": vars(args), "results": results},
                      handle, indent=2)


if __name__ == "__main__":
    main()
