"""Train SD 1.x/2.x or SDXL with ranked DPO (RankDPO; LiPO-λ DCG weights) on K images per prompt.

    diffalign data synth --prompts parti:PartiPrompts.tsv --model sdxl=stabilityai/stable-diffusion-xl-base-1.0 \\
        --scorer pickscore --scorer hpsv2.1 --images-per-prompt 4 --guidance 5 --out data/syn
    accelerate launch scripts/train_rank_dpo.py --config assets/configs/sdxl-rank-dpo-lora.yaml \\
        data.path=data/syn/ranked-00000-of-00001.jsonl

The same trainer as scripts/train_diffusion_dpo.py with ``train.objective=rank`` and
``data.format=ranked``: a micro-batch holds records of K images (padded, with a mask); the K images
of a record share one noise tensor and one timestep; the policy's and the reference's per-image
errors give implicit scores ``s_i = err_i - ref_err_i``, and ``ranked_dpo_loss``
(diffalign/losses.py) weighs every labelled pair (psi_i > psi_j) by ``ranked.weighting``. With K = 2
this is Diffusion-DPO exactly. Checkpoints, resume, logging and the saved LoRA are Diffusion-DPO's.
"""

from __future__ import annotations

from diffalign.training.dpo import train_from_command_line

if __name__ == "__main__":
    train_from_command_line("Ranked DPO training", ["train.objective=rank", "data.format=ranked"])
