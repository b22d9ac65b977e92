"""Direct reward fine-tuning of SD 1.x/2.x or SDXL: DRaFT, DRaFT-K, DRaFT-LV, AlignProp, ReFL.

    accelerate launch scripts/train_draft.py --config assets/configs/sd15-draft.yaml
    accelerate launch scripts/train_draft.py --config assets/configs/sdxl-draft.yaml reward.method=alignprop reward.k=10
    python scripts/train_draft.py --config assets/configs/tiny-draft.yaml        # the embedded tiny model, CPU

Each step samples a batch of training prompts with DDIM through the accelerate-prepared UNet,
with gradient only inside the method's window (diffalign/sampling.py: ``gradient_window``), decodes
with gradient into [0, 1] images, scores them with the reward scorer's differentiable path and
minimises ``-mean(reward) + reward.kl_weight * KL`` (diffalign/losses.py: ``direct_reward_loss``).
Held-out prompts with fixed seeds are scored by the reward and ``reward.aux_scorers`` during
training, to show reward hacking. The LoRA saves load with ``pipe.load_lora_weights(output_dir)``.
"""

from __future__ import annotations

from diffalign.config import RewardRunConfig
from diffalign.training.online import train_from_command_line
from diffalign.training.reward import train_reward

if __name__ == "__main__":
    train_from_command_line("Direct reward fine-tuning", RewardRunConfig, train_reward)
