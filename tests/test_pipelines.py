"""diffalign.pipelines: drop-in __call__, recorded rollouts, replay, gradient windows (tiny SD and SDXL)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import PNDMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

from diffalign.pipelines import (DiffAlignStableDiffusionPipeline, DiffAlignStableDiffusionXLPipeline,
                                 ReplayMismatchError)
from diffalign.sampling import decode_latents, gradient_window

PROMPTS = ["a red circle", "two blue squares"]
CLASSES = {"tiny_sd": (DiffAlignStableDiffusionPipeline, StableDiffusionPipeline),
           "tiny_sdxl": (DiffAlignStableDiffusionXLPipeline, StableDiffusionXLPipeline)}


def load(request, model, upstream=False):
    ours, theirs = CLASSES[model]
    pipe = (theirs if upstream else ours).from_pretrained(request.getfixturevalue(model))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("model", ["tiny_sd", "tiny_sdxl"])
def test_call_output_equals_upstream_and_rollout_matches_call(request, model):
    pipe, upstream = load(request, model), load(request, model, upstream=True)
    settings = dict(num_inference_steps=3, guidance_scale=5.0, output_type="np")
    ours = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), **settings).images
    theirs = upstream(PROMPTS, generator=torch.Generator().manual_seed(0), **settings).images
    np.testing.assert_array_equal(ours, theirs)
    called = upstream(PROMPTS, generator=torch.Generator().manual_seed(3), eta=1.0, num_inference_steps=3,
                      guidance_scale=5.0, output_type="latent").images
    rollout = pipe.rollout(PROMPTS, num_inference_steps=3, guidance_scale=5.0, eta=1.0,
                           generator=torch.Generator().manual_seed(3), output_type="latent", progress=False)
    torch.testing.assert_close(rollout.trajectory.latents[:, -1], called.float(), rtol=1e-4, atol=1e-5)
    trajectory = rollout.trajectory
    assert trajectory.latents.shape[:2] == (2, 4) and trajectory.log_probs.shape == (2, 3)
    assert trajectory.timesteps.tolist() == pipe.scheduler.timesteps.tolist()
    assert (trajectory.cond.time_ids is not None) == (model == "tiny_sdxl")


@pytest.mark.parametrize("model", ["tiny_sd", "tiny_sdxl"])
def test_rollout_is_reproducible_and_replays_with_ratio_one(request, model):
    pipe = load(request, model)
    first, second = (pipe.rollout(PROMPTS, num_inference_steps=4, eta=0.8, generator=torch.Generator().manual_seed(5),
                                  output_type="pt", progress=False) for _ in range(2))
    assert torch.equal(first.trajectory.latents, second.trajectory.latents)
    assert torch.equal(first.trajectory.log_probs, second.trajectory.log_probs)
    assert first.images.shape[1] == 3 and 0 <= first.images.min() and first.images.max() <= 1
    assert pipe.check_replay(first.trajectory, atol=1e-4) <= 1e-4
    ratios = (pipe.replay_log_probs(first.trajectory) - first.trajectory.log_probs).exp()
    torch.testing.assert_close(ratios, torch.ones_like(ratios), rtol=0, atol=1e-4)
    tampered = first.trajectory.select([0, 1])
    tampered.latents = tampered.latents.clone()
    tampered.latents[:, 2] += 0.5
    with pytest.raises(ReplayMismatchError, match="replayed log-probs differ"):
        pipe.check_replay(tampered)


def test_bad_rollouts_are_clear_errors(request):
    pipe = load(request, "tiny_sd")
    with pytest.raises(ValueError, match="need eta > 0"):
        pipe.rollout("x", num_inference_steps=2, eta=0.0)
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="need a DDIM scheduler.*DDIMScheduler.from_pretrained"):
        pipe.rollout("x", num_inference_steps=2)


def with_lora(pipe):
    from peft import LoraConfig

    pipe.unet.requires_grad_(False)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B starts at 0; move it so the adapter changes the output
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return [p for p in pipe.unet.parameters() if p.requires_grad]


def test_no_graph_outside_the_window_and_lora_gradients_inside(request):
    pipe = load(request, "tiny_sd")
    lora = with_lora(pipe)
    x_T = pipe.initial_latents(2, 16, 16, torch.Generator().manual_seed(0)).requires_grad_(True)
    calls = {"grad": 0, "no_grad": 0}
    pipe.unet.register_forward_hook(
        lambda *_: calls.__setitem__("grad" if torch.is_grad_enabled() else "no_grad",
                                     calls["grad" if torch.is_grad_enabled() else "no_grad"] + 1))
    last = pipe.sample_with_gradient(PROMPTS, gradient_window("draft-k", 4, 2, k=1), num_inference_steps=4,
                                     height=16, width=16, latents=x_T, checkpoint=False)
    assert calls == {"grad": 1, "no_grad": 3}
    assert torch.autograd.grad(last.latents.sum(), x_T, allow_unused=True)[0] is None  # nothing before the window
    images = decode_latents(pipe.vae, last.latents)
    images.mean().backward()
    assert all(p.grad is not None for p in lora) and sum(p.grad.abs().sum() for p in lora) > 0
    full = pipe.sample_with_gradient(PROMPTS, gradient_window("draft", 4, 2), num_inference_steps=4, height=16,
                                     width=16, latents=x_T, checkpoint=False)
    assert torch.autograd.grad(full.latents.sum(), x_T)[0].abs().sum() > 0


def test_checkpointed_window_gives_the_same_gradients_and_per_sample_windows_detach(request):
    pipe = load(request, "tiny_sd")
    lora = with_lora(pipe)
    x_T = pipe.initial_latents(2, 16, 16, torch.Generator().manual_seed(1))
    window = gradient_window("draft-k", 3, 2, k=2)
    window.mask[0] = torch.tensor([False, False, True])  # sample 0: last step only; sample 1: last two

    def gradients(checkpoint):
        for param in lora:
            param.grad = None
        out = pipe.sample_with_gradient(PROMPTS, window, num_inference_steps=3, height=16, width=16, latents=x_T,
                                        checkpoint=checkpoint, eta=0.5, generator=torch.Generator().manual_seed(2))
        out.latents.square().mean().backward()
        return out.latents.detach(), [p.grad.clone() for p in lora]

    plain_latents, plain = gradients(False)
    ckpt_latents, ckpt = gradients(True)
    torch.testing.assert_close(plain_latents, ckpt_latents)
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    reference_calls = []

    def reference():
        from contextlib import contextmanager

        @contextmanager
        def disabled():
            reference_calls.append(1)
            pipe.unet.disable_adapters()
            try:
                yield pipe.unet
            finally:
                pipe.unet.enable_adapters()
        return disabled()

    out = pipe.sample_with_gradient(PROMPTS, window, num_inference_steps=3, height=16, width=16, latents=x_T,
                                    reference=reference)
    assert len(reference_calls) == 2 and (out.kl > 0).all()  # steps 1 and 2 carry gradient for some sample
