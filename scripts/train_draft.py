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

import argparse

from accelerate import PartialState

from diffalign.config import RewardRunConfig, load_config
from diffalign.training.reward import train_reward


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Direct reward fine-tuning", epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config, e.g. assets/configs/sd15-draft.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. reward.method=alignprop reward.k=10")
    args = parser.parse_args(argv)
    final = train_reward(load_config(args.config, args.overrides, cls=RewardRunConfig,
                                     num_processes=PartialState().num_processes))
    print(f"done: {final}")
    return final


if __name__ == "__main__":
    main()
