"""Pretrain the embedded tiny text-to-image model (assets/models/shapes-sd) on procedural shapes.

A Stable-Diffusion-architecture pipeline at 64x64 pixels, trained from scratch on the captioned
scenes of :mod:`diffalign.shapes`:

1. VAE (``AutoencoderKL``, factor 4: 64x64x3 -> 16x16x4) on fresh random scenes each step,
   L1 + MSE reconstruction plus a small KL; the latent scaling factor is then set to 1/std of
   the latents, as SD did;
2. a dataset of captioned scenes is encoded once (posterior means x scaling factor);
3. UNet and the CLIP text encoder (``CLIPTextModel`` with a word-level CLIP tokenizer) trained
   together with the standard denoising loss, 10% of captions dropped to "" for classifier-free
   guidance, an EMA of both (diffusers ``EMAModel``) is what gets shipped. The defaults are the shipped
   model: a :class:`~diffalign.unets.PositionalUNet2DConditionModel` (a learned absolute-position
   embedding) on SD's betas rescaled to zero terminal SNR with v-prediction (Lin et al. 2024), so that
   it reads position words, trained 900 steps on captions of which half name a wrong colour
   (``--caption-noise 0.5``, web-style label noise), so that its colour errors vary from seed to seed
   and alignment has something to fix. ``--no-position-embedding --noise-schedule sd-epsilon
   --caption-noise 0 --steps 2000`` is the first shipped model (a stock ``UNet2DConditionModel`` with SD
   1.x's epsilon schedule), which never learned position words (docs/embedded-model.md);
4. the pipeline is saved with ``save_pretrained`` (safetensors, DDIM scheduler with the training
   schedule) and the checker measures its samples on held-out scenes: the numbers go to
   ``<out>/pretrain_report.json``.

Every stage resumes: finished stages are skipped and the UNet stage restarts from its last
checkpoint (written atomically). Deterministic for a seed on a given machine.

    python scripts/pretrain_tiny.py --out assets/models/shapes-sd --work outputs/pretrain-tiny
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
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from transformers import CLIPTextConfig, CLIPTextModel

from diffalign import shapes
from diffalign.losses import prediction_target
from diffalign.scorers.preprocess import tensor_to_pil
from diffalign.tiny import replacing_folder, write_word_tokenizer
from diffalign.unets import PositionalUNet2DConditionModel

SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
NOISE_SCHEDULES = {
    # Lin et al. 2024: SD's betas leave signal at t = T (alpha_bar_T = 0.0047), so training never asks the
    # model to place objects from pure noise; rescaled to zero terminal SNR, with v-prediction and
    # "trailing" timesteps so that sampling starts at t = T.
    "zero-snr-v": dict(SD_BETAS, rescale_betas_zero_snr=True, prediction_type="v_prediction",
                       timestep_spacing="trailing"),
    "sd-epsilon": dict(SD_BETAS, prediction_type="epsilon", timestep_spacing="leading", steps_offset=1),
}


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
                         up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[16, 32, 64],
                         layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=shapes.SIZE)


def build_unet(cross_attention_dim: int, channels: tuple[int, ...] = (64, 128),
               position_embedding: bool = False) -> UNet2DConditionModel:
    """One cross-attention level per entry of ``channels`` (16x16 latents; (64, 128): down to 8x8); with
    ``position_embedding`` a :class:`PositionalUNet2DConditionModel` (the stock UNet cannot tell left from right)."""
    unet_class = PositionalUNet2DConditionModel if position_embedding else UNet2DConditionModel
    return unet_class(sample_size=shapes.SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
                      block_out_channels=list(channels), norm_num_groups=16,
                      down_block_types=["CrossAttnDownBlock2D"] * len(channels),
                      up_block_types=["CrossAttnUpBlock2D"] * len(channels),
                      attention_head_dim=8, cross_attention_dim=cross_attention_dim)


def build_text_encoder(vocab_size: int, max_length: int) -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=256,
                                        projection_dim=64, num_hidden_layers=2, num_attention_heads=4,
                                        max_position_embeddings=max_length, hidden_act="quick_gelu",
                                        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                                        pad_token_id=vocab_size - 1))


def to_tensor(images: list) -> torch.Tensor:
    """PIL images -> float tensor [B, 3, H, W] in [-1, 1] (the VAE's range; x / 127.5 - 1 as in the shipped run)."""
    array = np.stack([np.asarray(image, dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def random_batch(rng: random.Random, count: int) -> tuple[list, list[str]]:
    scenes = [shapes.sample_scene(rng) for _ in range(count)]
    return [shapes.render(scene, rng) for scene in scenes], [scene.caption for scene in scenes]


def save_atomic(state: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def log_line(path: Path, record: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


def train_vae(work: Path, steps: int, batch_size: int, seed: int) -> AutoencoderKL:
    folder = work / "vae"
    if (folder / "config.json").is_file():
        return AutoencoderKL.from_pretrained(folder)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    vae = build_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    start = time.time()
    for step in range(1, steps + 1):
        images, _ = random_batch(rng, batch_size)
        pixels = to_tensor(images)
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        reconstruction_loss = F.l1_loss(reconstruction, pixels) + F.mse_loss(reconstruction, pixels)
        loss = reconstruction_loss + 1e-6 * posterior.kl().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps:
            log_line(work / "vae_log.jsonl", {"stage": "vae", "step": step, "reconstruction": reconstruction_loss.item(),
                                              "seconds": round(time.time() - start, 1)})
    vae.eval()
    with torch.no_grad():
        images, captions = random_batch(random.Random(seed + 1), 512)
        latents = vae.encode(to_tensor(images)).latent_dist.mean
        vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
        decoded = vae.decode(latents).sample
    reconstructions = tensor_to_pil(decoded / 2 + 0.5)
    accuracy = np.mean([shapes.check(image, caption).correct for image, caption in zip(reconstructions, captions)])
    log_line(work / "vae_log.jsonl", {"stage": "vae", "checker_correct_on_reconstructions": float(accuracy),
                                      "scaling_factor": vae.config.scaling_factor})
    vae.save_pretrained(folder, safe_serialization=True)
    return vae


def encode_dataset(work: Path, vae: AutoencoderKL, count: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    path = work / "latents.pt"
    if path.is_file():
        data = torch.load(path, weights_only=True)
        return data["latents"], data["captions"]
    rng = random.Random(seed + 2)
    latents, captions = [], []
    with torch.no_grad():
        for start in range(0, count, 500):
            images, batch_captions = random_batch(rng, min(500, count - start))
            latents.append(vae.encode(to_tensor(images)).latent_dist.mean * vae.config.scaling_factor)
            captions += batch_captions
    latents = torch.cat(latents)
    save_atomic({"latents": latents, "captions": captions}, path)
    return latents, captions


def sample_and_check(pipeline: StableDiffusionPipeline, count: int, seed: int, guidance_scale: float,
                     steps: int = 20) -> dict:
    """Checker numbers on ``count`` fresh scenes' captions (one image each, seeded)."""
    rng = random.Random(seed)
    captions = [shapes.sample_scene(rng).caption for _ in range(count)]
    images = []
    for start in range(0, count, 32):
        batch = captions[start:start + 32]
        images += pipeline(batch, num_inference_steps=steps, guidance_scale=guidance_scale, height=shapes.SIZE,
                           width=shapes.SIZE, generator=torch.Generator().manual_seed(seed + start)).images
    results = [shapes.check(image, caption) for image, caption in zip(images, captions)]
    summary = {"images": count, "guidance_scale": guidance_scale, "inference_steps": steps,
               "correct": float(np.mean([result.correct for result in results])),
               "fraction_right": float(np.mean([result.fraction_right for result in results]))}
    for attribute in ("color", "shape", "size", "position"):
        values = [value for result in results if (value := result.attribute_accuracy(attribute)) is not None]
        summary[attribute] = float(np.mean(values))
    return summary


def make_pipeline(vae, text_encoder, tokenizer, unet, noise_schedule: str = "sd-epsilon") -> StableDiffusionPipeline:
    sampler = DDIMScheduler(**NOISE_SCHEDULES[noise_schedule], clip_sample=False, set_alpha_to_one=False)
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=sampler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def train_unet(work: Path, vae: AutoencoderKL, tokenizer, latents: torch.Tensor, captions: list[str], steps: int,
               batch_size: int, seed: int, eval_every: int, eval_images: int, channels: tuple[int, ...] = (64, 128),
               position_embedding: bool = False, noise_schedule: str = "sd-epsilon"):
    torch.manual_seed(seed)
    text_encoder = build_text_encoder(len(tokenizer), tokenizer.model_max_length)
    unet = build_unet(text_encoder.config.hidden_size, channels, position_embedding)
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=5e-4, weight_decay=0.01)
    ema = EMAModel(parameters, decay=0.999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
    noise_scheduler = DDPMScheduler(**NOISE_SCHEDULES[noise_schedule])
    checkpoint = work / "unet_checkpoint.pt"
    step = 0
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=True)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        step = state["step"]
    token_ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                          return_tensors="pt").input_ids
    empty_ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                          return_tensors="pt").input_ids
    start = time.time()
    while step < steps:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        index = torch.randint(0, len(latents), (batch_size,), generator=generator)
        clean = latents[index]
        ids = token_ids[index].clone()
        ids[torch.rand(batch_size, generator=generator) < 0.1] = empty_ids[0]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        lr_scale = min(1.0, (step + 1) / 200)
        for group in optimizer.param_groups:
            group["lr"] = 5e-4 * lr_scale
        prediction = unet(noise_scheduler.add_noise(clean, noise, timesteps), timesteps,
                          text_encoder(ids).last_hidden_state).sample
        target = prediction_target(noise_scheduler.config.prediction_type, noise, clean, timesteps,
                                   noise_scheduler.alphas_cumprod)
        loss = F.mse_loss(prediction, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(parameters)
        step += 1
        if step % 25 == 0:
            log_line(work / "unet_log.jsonl", {"stage": "unet", "step": step, "loss": loss.item(),
                                               "seconds": round(time.time() - start, 1)})
        if step % eval_every == 0 or step == steps:
            save_atomic({"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                         "optimizer": optimizer.state_dict(), "ema": ema.state_dict(), "step": step}, checkpoint)
            ema.store(parameters)
            ema.copy_to(parameters)
            pipeline = make_pipeline(vae, text_encoder.eval(), tokenizer, unet.eval(), noise_schedule)
            log_line(work / "unet_log.jsonl", {"stage": "unet-eval", "step": step,
                                               **sample_and_check(pipeline, eval_images, seed + 10, guidance_scale=5.0)})
            ema.restore(parameters)
            unet.train()
            text_encoder.train()
    ema.copy_to(parameters)
    return text_encoder.eval(), unet.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="assets/models/shapes-sd", help="pipeline folder to write")
    parser.add_argument("--work", default="outputs/pretrain-tiny", help="checkpoints, latents and logs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=500)
    parser.add_argument("--vae-batch-size", type=int, default=32)
    parser.add_argument("--scenes", type=int, default=40000, help="captioned scenes encoded for the UNet stage")
    parser.add_argument("--steps", type=int, default=900, help="UNet + text encoder steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--unet-channels", default="64,128",
                        help="UNet channels per level, comma-separated (one cross-attention level each)")
    parser.add_argument("--position-embedding", action=argparse.BooleanOptionalAction, default=True,
                        help="a PositionalUNet2DConditionModel: the stock UNet plus a learned absolute-position "
                             "embedding (--no-position-embedding: the stock UNet, as in the first shipped model)")
    parser.add_argument("--noise-schedule", choices=tuple(NOISE_SCHEDULES), default="zero-snr-v",
                        help="zero-snr-v: zero terminal SNR, v-prediction, trailing timesteps; sd-epsilon: SD 1.x's")
    parser.add_argument("--caption-noise", type=float, default=0.5,
                        help="fraction of the training captions whose colour word is replaced by a wrong one "
                             "(web-style label noise; the checker's evaluation captions stay true)")
    parser.add_argument("--eval-every", type=int, default=300)
    parser.add_argument("--eval-images", type=int, default=128, help="held-out captions for the final checker numbers")
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = write_word_tokenizer(work / "tokenizer", shapes.WORDS)
    vae = train_vae(work, args.vae_steps, args.vae_batch_size, args.seed).eval()
    latents, captions = encode_dataset(work, vae, args.scenes, args.seed)
    if args.caption_noise:
        captions = shapes.mislabel_colors(captions, args.caption_noise, args.seed + 7)
    channels = tuple(int(value) for value in args.unet_channels.split(","))
    text_encoder, unet = train_unet(work, vae, tokenizer, latents, captions, args.steps, args.batch_size, args.seed,
                                    args.eval_every, min(64, args.eval_images), channels, args.position_embedding,
                                    args.noise_schedule)
    pipeline = make_pipeline(vae, text_encoder, tokenizer, unet, args.noise_schedule)
    with replacing_folder(out) as tmp:
        pipeline.save_pretrained(tmp, safe_serialization=True)
        evaluation = {f"guidance_{scale:g}": sample_and_check(pipeline, args.eval_images, args.seed + 100, scale)
                      for scale in (1.0, 3.0, 5.0, 7.5)}
        report = {"seed": args.seed, "vae_steps": args.vae_steps, "scenes": args.scenes, "unet_steps": args.steps,
                  "batch_size": args.batch_size, "unet_channels": list(channels),
                  "position_embedding": args.position_embedding, "noise_schedule": args.noise_schedule,
                  "caption_noise": args.caption_noise, "held_out_checker": evaluation,
                  "chance_color": 1 / len(shapes.COLORS), "chance_shape": 1 / len(shapes.SHAPES)}
        (tmp / "pretrain_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
