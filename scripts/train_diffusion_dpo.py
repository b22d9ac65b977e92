"""Train Stable Diffusion 1.x/2.x or SDXL with Diffusion-DPO (Wallace et al. 2023).

    python scripts/train_diffusion_dpo.py --config assets/configs/sdxl-dpo-lora.yaml train.max_steps=500
    accelerate launch scripts/train_diffusion_dpo.py --config assets/configs/sdxl-dpo-full.yaml

What happens, and where the code is:

1. ``load_config``: YAML + ``key=value`` overrides -> typed, validated config (diffalign/config.py).
   Bad keys, types and batch sizes fail here, before any model loads.
2. ``DPOTrainer.setup`` (diffalign/training/dpo.py):
   - loads UNet, VAE, text encoder(s), tokenizer(s) and the noise schedule with ``from_pretrained``
     (diffalign/models.py), freezes and casts the frozen parts, picks the attention backend;
   - adds LoRA adapters with peft (reference = the same UNet with adapters disabled) or, for a full
     fine-tune, keeps a frozen copy of the UNet as reference;
   - loads Pick-a-Pic or JSONL pairs, drops and counts ties (diffalign/data/pairs.py) and, with
     ``cache.enabled``, encodes latents and text once to disk (diffalign/data/cache.py);
   - builds the optimizer and lr schedule and resumes from a checkpoint if asked.
3. ``DPOTrainer.train``: per micro-batch, winners and losers share one noise tensor and one
   timestep; ``per_sample_mse`` and ``diffusion_dpo_loss`` (diffalign/losses.py) give the loss.
   Gradient accumulation, clipping, logging, atomic checkpoints, validation images.
4. The LoRA is saved for ``pipe.load_lora_weights(output_dir)`` (or the UNet with
   ``save_pretrained``), with a model card.
"""

from __future__ import annotations

from diffalign.training.dpo import train_from_command_line

if __name__ == "__main__":
    train_from_command_line("Diffusion-DPO training")
