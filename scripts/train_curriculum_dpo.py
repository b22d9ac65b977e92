"""Curriculum DPO: Diffusion-DPO on pairs ordered from easy (large gap) to hard, in stages.

    python scripts/train_curriculum_dpo.py --config assets/configs/shapes-dpo.yaml \
        data.path=outputs/demo/samples/pairs.jsonl curriculum.stages=4 curriculum.steps_per_stage=50

The pairs JSONL needs a "gap" on every line (score or rank gap; `diffalign demo` writes the scorer
gap). The trainer is scripts/train_diffusion_dpo.py's; ``curriculum.stages`` swaps its batch sampler
for diffalign.data.curriculum.CurriculumBatchSampler: stage s trains the s-th easiest chunk of pairs
(``curriculum.mode=exclusive``) or all chunks up to it (``cumulative``), for
``curriculum.steps_per_stage`` optimizer steps each, the last stage until ``train.max_steps``.
Five stages (the paper's range is 5-6) unless ``curriculum.stages=S`` is given on the command line.
Stage changes are printed with pair counts and gap ranges and logged as ``curriculum_stage``.
"""

from __future__ import annotations

from diffalign.training.dpo import train_from_command_line

if __name__ == "__main__":
    train_from_command_line("Curriculum DPO training", ["curriculum.stages=5"])  # 5 unless given on the command line
