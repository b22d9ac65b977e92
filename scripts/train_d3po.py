"""D3PO on SD 1.x/2.x or SDXL: per-denoising-step DPO on pairs of trajectories, labelled by scorers or people.

    accelerate launch scripts/train_d3po.py --config assets/configs/sd15-d3po.yaml
    python scripts/train_d3po.py --config assets/configs/tiny-d3po.yaml            # the embedded tiny model, CPU
    python scripts/train_d3po.py --config assets/configs/tiny-d3po.yaml d3po.labels=human d3po.label_dir=outputs/labels

Each optimizer step samples K trajectories per prompt from one shared initial noise through the
accelerate-prepared UNet (stochastic DDIM, eta > 0), labels every pair of a prompt's images by
Pareto dominance over ``d3po.scorers`` (or takes stored rollouts and people's labels, see
``diffalign label``), replays the first round to check that recorded and recomputed log-probs
agree, and trains ``diffalign.losses.d3po_loss`` on a random ``d3po.timestep_fraction`` of each
pair's steps against the LoRA-disabled reference. Details: docs/trajectory.md.
"""

from __future__ import annotations

from diffalign.config import D3PORunConfig
from diffalign.training.d3po import train_d3po
from diffalign.training.online import train_from_command_line

if __name__ == "__main__":
    train_from_command_line("D3PO", D3PORunConfig, train_d3po)
