"""Which caption words does a shapes pipeline's denoiser use? (docs/embedded-model.md)

    python scripts/probe_caption_words.py [--model assets/models/shapes-sd] [--scenes 384] [--seed 5]

For true renders of one-object scenes, the UNet's ε-prediction error with the true caption is compared
with its error, at the same noisy latents, when one word of the caption is swapped for another word of
the same kind (colour, shape, size or position; positions go to the opposite side, center to left).
Printed per kind and per half of the noise schedule: the mean ratio swapped / true error. A ratio of 1
means the denoiser ignores that kind of word: no preference about it can be learned by re-weighting
what the model already draws, and alignment has nothing to work with there.

    python scripts/probe_caption_words.py --colour-decision

When is the colour decided while sampling? Each image is sampled with one caption for its first k
DDIM steps and the same caption with another colour word for the rest (the same initial noise for
every k); printed per k: how often the checker finds the first caption's colour and the second's.
"""

from __future__ import annotations

import argparse
import json
import random

import numpy as np
import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline

import diffalign.unets  # noqa: F401  (diffusers loads a PositionalUNet2DConditionModel only once it is imported)
from diffalign import shapes
from diffalign.losses import prediction_target
from diffalign.paths import asset
from diffalign.scorers import pil_to_tensor

KINDS = {"colour": tuple(shapes.COLORS), "shape": shapes.SHAPES, "size": tuple(shapes.HALF_EXTENT),
         "position": shapes.POSITIONS}
HALVES = ((0, 500), (500, 1000))


def swap_word(word: str) -> str:
    """Another word of ``word``'s kind: the opposite position, or the next word of its kind (cyclic)."""
    if word in shapes.POSITIONS:
        return shapes.FAR_POSITIONS[word]
    for words in KINDS.values():
        if word in words:
            return words[(words.index(word) + 1) % len(words)]
    raise ValueError(f"{word!r} is not a colour, shape, size or position word")


def word_sensitivity(pipeline: StableDiffusionPipeline, scenes: int, seed: int, batch_size: int = 64) -> dict:
    """{kind: {"t<500": ratio, "t>=500": ratio, "captions": n}}: mean swapped / true ε-MSE over captions."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    ratios = {(kind, half): [] for kind in KINDS for half in HALVES}

    def errors(noisy, timesteps, target, captions) -> torch.Tensor:
        embeds = pipeline.encode_prompt(captions, "cpu", 1, do_classifier_free_guidance=False)[0]
        prediction = pipeline.unet(noisy, timesteps, embeds).sample
        return ((prediction - target) ** 2).mean((1, 2, 3))

    with torch.no_grad():
        for start in range(0, scenes, batch_size):
            batch = [shapes.sample_scene(rng, two_object_fraction=0.0) for _ in range(min(batch_size, scenes - start))]
            images = [shapes.render(scene, rng) for scene in batch]
            pixels = pil_to_tensor(images) * 2 - 1  # the VAE's range, [-1, 1]
            latents = pipeline.vae.encode(pixels).latent_dist.mean * pipeline.vae.config.scaling_factor
            captions = [scene.caption for scene in batch]
            for half in HALVES:
                timesteps = torch.randint(*half, (len(batch),), generator=generator)
                noise = torch.randn(latents.shape, generator=generator)
                noisy = noise_scheduler.add_noise(latents, noise, timesteps)
                target = prediction_target(noise_scheduler.config.prediction_type, noise, latents, timesteps,
                                           noise_scheduler.alphas_cumprod)
                true_error = errors(noisy, timesteps, target, captions)
                for kind, words in KINDS.items():
                    rows = [i for i, caption in enumerate(captions) if set(caption.split()) & set(words)]
                    if not rows:
                        continue
                    swapped = [" ".join(swap_word(w) if w in words else w for w in captions[i].split()) for i in rows]
                    error = errors(noisy[rows], timesteps[rows], target[rows], swapped)
                    ratios[(kind, half)] += (error / true_error[rows]).tolist()
    return {kind: {"t<500": float(np.mean(ratios[(kind, HALVES[0])])),
                   "t>=500": float(np.mean(ratios[(kind, HALVES[1])])),
                   "captions": len(ratios[(kind, HALVES[0])])}
            for kind in KINDS if ratios[(kind, HALVES[0])]}


DECISION_STEPS = 20  # DDIM steps of --colour-decision, as in the demo


def colour_swapped_captions(count: int, seed: int) -> tuple[list[str], list[str]]:
    """``count`` seeded one-object captions, and the same captions with the next colour (:func:`swap_word`)."""
    rng = random.Random(seed)
    first = [shapes.sample_scene(rng, two_object_fraction=0.0).caption for _ in range(count)]
    return first, [" ".join(swap_word(w) if w in shapes.COLORS else w for w in caption.split()) for caption in first]


def colour_decision(pipeline: StableDiffusionPipeline, count: int, seed: int, switch_after: list[int],
                    steps: int = DECISION_STEPS, guidance_scale: float = 5.0) -> dict[int, dict[str, float]]:
    """{k: {"first": colour accuracy for the first caption, "second": for the second}} over the captions of
    :func:`colour_swapped_captions`, each image sampled with the first caption for its first k of ``steps`` DDIM
    steps and with the second after that (image i seeded ``seed + i`` for every k); k = 0 is the second caption
    throughout, k = steps the first."""
    first, second = colour_swapped_captions(count, seed)
    second_embeds = pipeline.encode_prompt(second, "cpu", 1, do_classifier_free_guidance=True)

    def images_switched_after(k: int) -> list:
        def switch(pipe, step_index, timestep, tensors):
            if step_index + 1 != k:
                return {}
            return {"prompt_embeds": torch.cat([second_embeds[1], second_embeds[0]])}  # [unconditional, text]

        return pipeline(first if k > 0 else second, num_inference_steps=steps, guidance_scale=guidance_scale,
                        height=shapes.SIZE, width=shapes.SIZE, callback_on_step_end=switch,
                        callback_on_step_end_tensor_inputs=["prompt_embeds"],
                        generator=[torch.Generator().manual_seed(seed + i) for i in range(count)]).images

    result = {}
    for k in switch_after:
        images = images_switched_after(k)
        result[k] = {name: float(np.mean([shapes.check(image, caption).attribute_accuracy("color")
                                          for image, caption in zip(images, captions)]))
                     for name, captions in (("first", first), ("second", second))}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(asset("models", "shapes-sd")), help="shapes pipeline folder")
    parser.add_argument("--scenes", type=int, default=384, help="one-object true renders")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--colour-decision", action="store_true",
                        help=f"instead: switch the caption's colour word after k of {DECISION_STEPS} DDIM steps (guidance 5)")
    parser.add_argument("--images", type=int, default=96, help="captions sampled per k (--colour-decision)")
    args = parser.parse_args()
    pipeline = StableDiffusionPipeline.from_pretrained(args.model, safety_checker=None, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    if args.colour_decision:
        pipeline.scheduler.set_timesteps(DECISION_STEPS)
        timesteps = pipeline.scheduler.timesteps.tolist()
        result = colour_decision(pipeline, args.images, args.seed, [0, 1, 2, 3, 4, 6, 8, 12, DECISION_STEPS])
        print("| steps with the first caption | last of them, t | first caption's colour | second caption's colour |"
              "\n|---|---|---|---|")
        for k, row in result.items():
            print(f"| {k} | {timesteps[k - 1] if k else '-'} | {row['first']:.2f} | {row['second']:.2f} |")
        print(json.dumps({"model": args.model, "images": args.images, "seed": args.seed, "colour_decision": result}))
        return
    result = word_sensitivity(pipeline, args.scenes, args.seed)
    print("| word swapped | captions | error ratio, t < 500 | error ratio, t >= 500 |\n|---|---|---|---|")
    for kind, row in result.items():
        print(f"| {kind} | {row['captions']} | {row['t<500']:.3f} | {row['t>=500']:.3f} |")
    print(json.dumps({"model": args.model, "scenes": args.scenes, "seed": args.seed, "ratios": result}))


if __name__ == "__main__":
    main()
