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

Optionally (``--preference-steps N``), a second, PickScore-style stage: samples of ``--pipeline``
(the demo's sampling settings) for captions outside the held-out ``shapes-demo`` set, rated by the
shapes checker standing in for people; every two samples of a caption with different shares of
attributes right make a pair, trained with ``-log sigmoid(s_preferred - s_rejected)`` plus the
contrastive loss on rendered scenes (so that it does not forget them). Agreement with the checker on
captions kept out of that stage is reported before and after. The shipped scorer has no such stage
(docs/embedded-model.md says what it changed).

The folder is a standard CLIP model + processor folder, loaded by the ``shapes-clip`` scorer
(PickScore's formula: ``logit_scale.exp() * cos``). Held-out numbers go to
``<out>/pretrain_report.json``. Deterministic for a seed on a given machine.

    python scripts/pretrain_tiny_scorer.py --out assets/models/shapes-clip
    python scripts/pretrain_tiny_scorer.py --out outputs/shapes-clip-pref --preference-steps 600
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


def embed(model: CLIPModel, preprocess: ClipPreprocess, tokenizer, images, captions) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm image features [len(images), D] and caption features [len(captions), D]."""
    pixels = preprocess.tensor(pil_to_tensor(images))
    tokens = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    image_features = F.normalize(model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output), dim=-1)
    text_features = F.normalize(model.text_projection(model.text_model(**tokens).pooler_output), dim=-1)
    return image_features, text_features


def similarities(model: CLIPModel, preprocess: ClipPreprocess, tokenizer, images, captions) -> torch.Tensor:
    """logit_scale.exp() * cos, [len(images), len(captions)]."""
    image_features, text_features = embed(model, preprocess, tokenizer, images, captions)
    return model.logit_scale.exp() * image_features @ text_features.T


def contrastive_loss(model, preprocess, tokenizer, rng: random.Random, count: int) -> torch.Tensor:
    """Symmetric InfoNCE over ``count`` rendered scenes with their wrong images and captions as extra negatives."""
    images, captions = batch(rng, count)
    scores = similarities(model, preprocess, tokenizer, images, captions)
    targets = torch.arange(count)
    return (F.cross_entropy(scores[:count], targets) + F.cross_entropy(scores.T[:count], targets)) / 2


def matched_scores(model, preprocess, tokenizer, images, captions) -> torch.Tensor:
    """The scorer's score [N] of each image for its own caption: logit_scale.exp() * cos(image_i, caption_i)."""
    image_features, text_features = embed(model, preprocess, tokenizer, images, captions)
    return model.logit_scale.exp() * (image_features * text_features).sum(-1)


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


def model_samples(pipeline_path: str, folder: Path, count: int, images: int, seed: int):
    """``images`` samples of the pipeline (the demo's sampling settings) for each of ``count`` grammar captions
    outside the held-out ``shapes-demo`` set, judged by the checker: the PickScore-style preference data, with
    the checker as the rater. Resumes: images already in ``folder`` are kept. Returns the score table."""
    from diffalign.demo import CHECKER, CHECKER_FRACTION, DemoSettings, training_captions
    from diffalign.evaluation.generate import GenerationSettings, generate_images, load_eval_pipeline
    from diffalign.evaluation.prompts import load_prompt_set
    from diffalign.evaluation.scoring import score_run

    held_out = {record.text for record in load_prompt_set("shapes-demo")}
    prompts_file = folder.parent / f"{folder.name}-prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": caption}) + "\n"
                                    for caption in training_captions(count, seed, held_out)))
    demo = DemoSettings()
    settings = GenerationSettings(images_per_prompt=images, seed=seed, num_inference_steps=demo.num_inference_steps,
                                  guidance_scale=demo.guidance_scale, height=shapes.SIZE, width=shapes.SIZE,
                                  batch_size=32)
    generate_images(load_eval_pipeline(pipeline_path, device="cpu"), load_prompt_set(f"jsonl:{prompts_file}"),
                    folder, settings, run_info={"model": pipeline_path, "name": "scorer-preference-samples"})
    table = score_run(folder, [CHECKER, CHECKER_FRACTION])
    table["pil"] = [Image.open(folder / image).convert("RGB") for image in table["image"]]
    return table


def checker_pairs(table) -> list[tuple]:
    """(preferred image, rejected image, caption) for every two samples of a caption whose share of attributes
    right differs (the checker as the rater; equal shares are ties and left out)."""
    from diffalign.demo import CHECKER_FRACTION

    pairs = []
    for _, group in table.groupby("prompt_id", sort=True):
        rows = list(group.itertuples(index=False))
        shares = group[CHECKER_FRACTION].tolist()
        for i in range(len(rows)):
            for j in range(len(rows)):
                if shares[i] > shares[j]:
                    pairs.append((rows[i].pil, rows[j].pil, rows[i].prompt))
    return pairs


def evaluate_on_samples(model, preprocess, tokenizer, table) -> dict:
    """On held-out model samples: how often the scorer prefers the image the checker prefers, and the checker's
    all-right rate of the scorer's top image per caption (best-of-K) against the mean and the checker's own best."""
    from diffalign.demo import CHECKER, CHECKER_FRACTION

    model.eval()
    with torch.no_grad():
        scores = matched_scores(model, preprocess, tokenizer, table["pil"].tolist(), table["prompt"].tolist()).tolist()
    model.train()
    table = table.assign(score=scores)
    agree = decided = 0
    for _, group in table.groupby("prompt_id"):
        shares, values = group[CHECKER_FRACTION].tolist(), group["score"].tolist()
        for i in range(len(shares)):
            for j in range(i + 1, len(shares)):
                if shares[i] != shares[j]:
                    decided += 1
                    agree += int((shares[i] > shares[j]) == (values[i] > values[j]))
    groups = table.groupby("prompt_id")
    return {"pair_agreement_with_checker": agree / decided, "checker_decided_pairs": decided,
            "checker_all_right_mean": float(table[CHECKER].mean()),
            "checker_all_right_scorer_best_of_k": float(table.loc[groups["score"].idxmax(), CHECKER].mean()),
            "checker_all_right_oracle_best_of_k": float(groups[CHECKER].max().mean())}


def learning_rate(peak: float, step: int, steps: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    return float(peak * min(1.0, (step + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * step / steps)))


def train_stage(model, optimizer, checkpoint: Path, log: Path, steps: int, loss_fn, peak_lr: float,
                seed: int, evaluate_fn, eval_every: int) -> None:
    """Run ``loss_fn(rng)`` steps up to ``steps``, resuming from ``checkpoint`` (written atomically at every
    evaluation); logs every 25 steps and every evaluation to ``log``."""
    step = 0
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
    start = time.time()
    while step < steps:
        rng = random.Random(seed * 1_000_003 + step)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(peak_lr, step, steps, 100)
        loss = loss_fn(rng)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        step += 1
        record = {"step": step, "loss": round(loss.item(), 4), "seconds": round(time.time() - start, 1)}
        if step % eval_every == 0 or step == steps:
            record.update(evaluate_fn())
            tmp = checkpoint.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, tmp)
            os.replace(tmp, checkpoint)
        if step % 25 == 0 or step % eval_every == 0 or step == steps:
            with log.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="assets/models/shapes-clip")
    parser.add_argument("--work", default="outputs/pretrain-tiny-scorer", help="checkpoints, samples and logs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1500, help="contrastive steps")
    parser.add_argument("--batch-size", type=int, default=32, help="scenes per step (2x images and captions)")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--eval-scenes", type=int, default=1000)
    parser.add_argument("--pipeline", default="assets/models/shapes-sd",
                        help="the text-to-image model whose samples the preference stage learns to rank")
    parser.add_argument("--preference-steps", type=int, default=0,
                        help="PickScore-style steps on the pipeline's samples rated by the checker (0: contrastive only, as shipped)")
    parser.add_argument("--preference-captions", type=int, default=400)
    parser.add_argument("--preference-images", type=int, default=4, help="samples per caption")
    parser.add_argument("--preference-pairs", type=int, default=32, help="pairs per preference step")
    parser.add_argument("--validation-captions", type=int, default=40, help="captions kept out of preference training")
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = write_word_tokenizer(work / "tokenizer", shapes.WORDS)
    torch.manual_seed(args.seed)
    model = build_clip(len(tokenizer), tokenizer.model_max_length)
    preprocess = ClipPreprocess(size=shapes.SIZE, geometry="shortest", mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    train_stage(model, optimizer, work / "checkpoint.pt", work / "log.jsonl", args.steps,
                lambda rng: contrastive_loss(model, preprocess, tokenizer, rng, args.batch_size), 1e-3, args.seed,
                lambda: evaluate(model, preprocess, tokenizer, args.seed + 1, 256), args.eval_every)
    report = {"seed": args.seed, "steps": args.steps, "batch_size": args.batch_size}
    if args.preference_steps:
        table = model_samples(args.pipeline, work / "preference-samples", args.preference_captions,
                              args.preference_images, args.seed + 11)
        prompt_ids = sorted(set(table["prompt_id"]))
        validation_ids = set(random.Random(args.seed).sample(prompt_ids, args.validation_captions))
        validation = table[table["prompt_id"].isin(validation_ids)]
        pairs = checker_pairs(table[~table["prompt_id"].isin(validation_ids)])
        if not pairs:
            raise SystemExit(f"no preference pairs: the checker rates every sample of each training caption alike "
                             f"(see {work / 'preference-samples' / 'scores.csv'}); use more captions or images")
        report["model_samples_before_preferences"] = evaluate_on_samples(model, preprocess, tokenizer, validation)

        def preference_loss(rng: random.Random) -> torch.Tensor:
            chosen = rng.sample(pairs, min(args.preference_pairs, len(pairs)))
            winners, losers, captions = zip(*chosen)
            preferred, rejected = matched_scores(model, preprocess, tokenizer, [*winners, *losers],
                                                 [*captions, *captions]).chunk(2)
            return (-F.logsigmoid(preferred - rejected).mean()
                    + contrastive_loss(model, preprocess, tokenizer, rng, args.batch_size // 2))

        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.05)
        train_stage(model, optimizer, work / "preference-checkpoint.pt", work / "preference-log.jsonl",
                    args.preference_steps, preference_loss, 2e-4, args.seed + 1,
                    lambda: evaluate_on_samples(model, preprocess, tokenizer, validation), args.eval_every)
        report.update(preference_steps=args.preference_steps, preference_pairs=len(pairs),
                      preference_captions=args.preference_captions - args.validation_captions,
                      validation_captions=args.validation_captions, pipeline=args.pipeline,
                      model_samples_after_preferences=evaluate_on_samples(model, preprocess, tokenizer, validation))
    with replacing_folder(out) as tmp:
        model.eval().save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        CLIPImageProcessor(size={"shortest_edge": shapes.SIZE}, crop_size={"height": shapes.SIZE, "width": shapes.SIZE},
                           image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD),
                           resample=3).save_pretrained(tmp)
        report["held_out"] = evaluate(model, preprocess, tokenizer, args.seed + 2, args.eval_scenes)
        (tmp / "pretrain_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
