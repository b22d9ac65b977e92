"""Curriculum DPO as a sampler: pairs ordered from easy to hard, trained in stages.

A pair's difficulty is its label gap (rank gap, as in the paper, or score gap, as in its code):
far apart is easy. :func:`curriculum_stages` orders the pairs by gap, largest first, and splits
them into S stages of nearly equal size; a stage trains on its own chunk (``exclusive``) or on
every chunk up to it (``cumulative``). :class:`CurriculumBatchSampler` advances one stage every
``batches_per_stage`` micro-batches and stays in the last stage afterwards. Sampling runs in the
main process, so DataLoader workers only fetch the indices it yields and a stage change reaches
them at once (the public Curriculum-DPO code set the stage on the dataset, whose worker copies
never saw it). The position in micro-batches determines everything, so a resumed run continues
in the right stage at the right place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from diffalign.training.sampler import ResumableBatchSampler

MODES = ("cumulative", "exclusive")


@dataclass(frozen=True)
class Stage:
    """One curriculum stage: the pair indices it trains on and the range of their gaps."""

    index: int
    items: tuple[int, ...]
    min_gap: float
    max_gap: float

    def describe(self) -> dict:
        """What is logged when the stage starts."""
        return {"stage": self.index, "pairs": len(self.items), "min_gap": self.min_gap, "max_gap": self.max_gap}


def curriculum_stages(gaps: Sequence[float], stages: int, mode: str = "cumulative") -> list[Stage]:
    """Split pairs into ``stages`` stages from easy (large ``gaps``) to hard (small ``gaps``).

    ``gaps``: one non-negative difficulty gap per pair (index = pair index). Equal gaps keep index
    order. Chunk sizes differ by at most one. Raises ValueError for fewer pairs than stages.
    """
    if mode not in MODES:
        raise ValueError(f"curriculum mode must be one of {MODES}, got {mode!r}")
    if stages < 1:
        raise ValueError(f"stages must be >= 1, got {stages}")
    gaps = [float(gap) for gap in gaps]
    if len(gaps) < stages:
        raise ValueError(f"{len(gaps)} pairs cannot fill {stages} curriculum stages")
    if any(gap < 0 for gap in gaps):
        raise ValueError("difficulty gaps must be >= 0 (|label_i - label_j| or a rank difference)")
    order = sorted(range(len(gaps)), key=lambda index: (-gaps[index], index))
    size, extra = divmod(len(order), stages)
    chunks, begin = [], 0
    for stage in range(stages):
        end = begin + size + (stage < extra)
        chunks.append(order[begin:end])
        begin = end
    result = []
    for stage in range(stages):
        items = [i for chunk in chunks[:stage + 1] for i in chunk] if mode == "cumulative" else chunks[stage]
        chosen = [gaps[i] for i in items]
        result.append(Stage(stage, tuple(items), min(chosen), max(chosen)))
    return result


def stage_index(position: int, per_stage: int, stages: int) -> int:
    """The stage (0-based) of ``position`` when each stage lasts ``per_stage`` positions and the last one
    continues indefinitely."""
    return min(position // per_stage, stages - 1)


class CurriculumBatchSampler(torch.utils.data.Sampler):
    """Batches of ``(index, epoch)`` for this process, stage by stage, from micro-batch ``start`` on, forever.

    Stage s covers micro-batches ``[s * batches_per_stage, (s + 1) * batches_per_stage)``; the last
    stage continues indefinitely. Within a stage the order is :class:`ResumableBatchSampler`'s over
    the stage's pairs, seeded by (seed, stage), with the same process sharding.
    """

    def __init__(self, stages: list[Stage], batches_per_stage: int, batch_size: int, seed: int,
                 process_index: int = 0, num_processes: int = 1, start: int = 0):
        if batches_per_stage < 1:
            raise ValueError(f"batches_per_stage must be >= 1, got {batches_per_stage}")
        self.stages, self.batches_per_stage = stages, batches_per_stage
        self.batch_size, self.seed = batch_size, seed
        self.process_index, self.num_processes, self.start = process_index, num_processes, start

    def stage_at(self, position: int) -> Stage:
        """The stage of micro-batch ``position`` (0-based)."""
        return self.stages[stage_index(position, self.batches_per_stage, len(self.stages))]

    def __iter__(self):
        position = self.start
        while True:
            stage = self.stage_at(position)
            stage_start = stage.index * self.batches_per_stage
            last = stage.index == len(self.stages) - 1
            inner = ResumableBatchSampler(len(stage.items), self.batch_size, self.seed * 7_919 + stage.index,
                                          self.process_index, self.num_processes, start=position - stage_start)
            for batch in inner:
                yield [(stage.items[index], epoch) for index, epoch in batch]
                position += 1
                if not last and position == stage_start + self.batches_per_stage:
                    break
