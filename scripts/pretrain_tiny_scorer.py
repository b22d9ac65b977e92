"""Pretrain the embedded tiny preference scorer (assets/models/shapes-clip) on procedural shapes.

A CLIP model (transformers ``CLIPModel``: ViT image tower on 64x64 inputs, text tower with the
word-level CLIP tokenizer of the embedded pipeline) trained contrastively on captioned scenes of
:mod:`diffalign.shapes`, with hard negatives so that it ranks images *of the same prompt*, which
is what preference labelling needs:

- each step renders B scenes, and for each a wrong image (one stated attribute changed, caption
  kept: :func:`diffalign.shapes.corrupt`) and a wrong caption (one word away:
  :func:`diffalign.shapes.perturb_caption`);
- image->text cross-entropy over the 2B captions, text->image over the 2B images (symmetric
  InfoNCE with a learned temperature, as CLIP);
- images are blurred and noised at random so that the imperfect samples of a diffusion model
  are in the training distribution.

The folder is a standard CLIP model + processor folder, loaded by the ``shapes-clip`` scorer
(PickScore's formula: ``logit_scale.exp() * cos``). Held-out numbers go to
``<out>/pretrain_report.json``. Deterministic for a seed on a given machine.

    python scripts/pretrain_tiny_scorer.py --out assets/models/shapes-clip
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from diffalign import shapes
from diffalign.scorers.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipPreprocess, pil_to_tensor
from diffalign.tiny import replacing_folder, write_word_tokenizer


def build_clip(vocab_size: int, max_length: int) -> CLIPModel:
    text = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                num_attention_heads=4, max_position_embeddings=max_length, hidden_act="quick_gelu",
                bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    vision = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                  image_size=shapes.SIZE, patch_size=8, hidden_act="quick_gelu")
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=64))


def augment(image, rng: random.Random):
    """Random blur (radius up to 1.5 px) and pixel noise (sigma up to 20/255), each half of the time."""
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    if rng.random() < 0.5:
        array = np.asarray(image, dtype=np.float32)
        noise = np.random.default_rng(rng.randrange(2**32)).normal(0, rng.uniform(2, 20), array.shape)
        image = Image.fromarray(np.clip(array + noise, 0, 255).astype(np.uint8))
    return image


def batch(rng: random.Random, count: int, augmented: bool = True) -> tuple[list, list[str]]:
    """2*count images (right ones, then wrong ones) and 2*count captions (right, then perturbed)."""
    scenes = [shapes.sample_scene(rng) for _ in range(count)]
    right = [shapes.render(scene, rng) for scene in scenes]
    wrong = [shapes.render(shapes.corrupt(scene, rng), rng) for scene in scenes]
    captions = [scene.caption for scene in scenes] + [shapes.perturb_caption(scene.caption, rng) for scene in scenes]
    images = right + wrong
    if augmented:
        images = [augment(image, rng) for image in images]
    return images, captions


def similarities(model: CLIPModel, preprocess: ClipPreprocess, tokenizer, images, captions) -> torch.Tensor:
    """logit_scale.exp() * cos, [len(images), len(captions)]."""
    pixels = preprocess.tensor(pil_to_tensor(images))
    tokens = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    image_features = F.normalize(model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output), dim=-1)
    text_features = F.normalize(model.text_projection(model.text_model(**tokens).pooler_output), dim=-1)
    return model.logit_scale.exp() * image_features @ text_features.T


def evaluate(model, preprocess, tokenizer, seed: int, count: int) -> dict:
    """Held-out accuracies: right image above wrong image for the caption (the preference a labeller
    needs), right caption above perturbed caption for the image, both with and without augmentation."""
    model.eval()
    report = {}
    with torch.no_grad():
        for augmented in (False, True):
            images, captions = batch(random.Random(seed), count, augmented)
            scores = similarities(model, preprocess, tokenizer, images, captions)
            index = torch.arange(count)
            suffix = "augmented" if augmented else "clean"
            report[f"right_image_over_wrong_image_{suffix}"] = float(
                (scores[index, index] > scores[index + count, index]).float().mean())
            report[f"right_caption_over_perturbed_{suffix}"] = float(
                (scores[index, index] > scores[index, index + count]).float().mean())
    model.train()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="assets/models/shapes-clip")
    parser.add_argument("--work", default="outputs/pretrain-tiny-scorer", help="checkpoint and logs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32, help="scenes per step (2x images and captions)")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--eval-scenes", type=int, default=1000)
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = write_word_tokenizer(work / "tokenizer", shapes.WORDS)
    torch.manual_seed(args.seed)
    model = build_clip(len(tokenizer), tokenizer.model_max_length)
    preprocess = ClipPreprocess(size=shapes.SIZE, geometry="shortest", mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    checkpoint, log = work / "checkpoint.pt", work / "log.jsonl"
    step = 0
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
    start = time.time()
    while step < args.steps:
        rng = random.Random(args.seed * 1_000_003 + step)
        images, captions = batch(rng, args.batch_size)
        for group in optimizer.param_groups:
            group["lr"] = float(1e-3 * min(1.0, (step + 1) / 100) * 0.5 * (1 + np.cos(np.pi * step / args.steps)))
        scores = similarities(model, preprocess, tokenizer, images, captions)
        targets = torch.arange(args.batch_size)
        loss = (F.cross_entropy(scores[:args.batch_size], targets) + F.cross_entropy(scores.T[:args.batch_size], targets)) / 2
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        step += 1
        record = {"step": step, "loss": round(loss.item(), 4), "seconds": round(time.time() - start, 1)}
        if step % args.eval_every == 0 or step == args.steps:
            record.update(evaluate(model, preprocess, tokenizer, args.seed + 1, 256))
            tmp = checkpoint.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, tmp)
            os.replace(tmp, checkpoint)
        if step % 25 == 0 or "right_image_over_wrong_image_clean" in record:
            with log.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)
    with replacing_folder(out) as tmp:
        model.eval().save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        CLIPImageProcessor(size={"shortest_edge": shapes.SIZE}, crop_size={"height": shapes.SIZE, "width": shapes.SIZE},
                           image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD),
                           resample=3).save_pretrained(tmp)
        report = {"seed": args.seed, "steps": args.steps, "batch_size": args.batch_size,
                  "held_out": evaluate(model, preprocess, tokenizer, args.seed + 2, args.eval_scenes)}
        (tmp / "pretrain_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
