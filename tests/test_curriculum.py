"""Curriculum sampler: easy-to-hard stages, stage boundaries, resume, sharding and DataLoader workers."""

from itertools import islice

import pytest
import torch

from diffalign.data.curriculum import CurriculumBatchSampler, curriculum_stages

GAPS = [0.1, 0.9, 0.5, 0.5, 0.3]


def test_stages_order_easy_to_hard_cumulative_and_exclusive():
    # by gap, largest first: 1 (0.9), 2 (0.5), 3 (0.5), 4 (0.3), 0 (0.1); 5 pairs in 2 stages -> 3 + 2
    cumulative = curriculum_stages(GAPS, 2, "cumulative")
    assert [s.items for s in cumulative] == [(1, 2, 3), (1, 2, 3, 4, 0)]
    assert [s.describe() for s in cumulative] == [{"stage": 0, "pairs": 3, "min_gap": 0.5, "max_gap": 0.9},
                                                  {"stage": 1, "pairs": 5, "min_gap": 0.1, "max_gap": 0.9}]
    exclusive = curriculum_stages(GAPS, 2, "exclusive")
    assert [s.items for s in exclusive] == [(1, 2, 3), (4, 0)]
    assert (exclusive[1].min_gap, exclusive[1].max_gap) == (0.1, 0.3)


def stage_of(stages, batch):
    return {next(s.index for s in stages if index in s.items) for index, _ in batch}


def test_sampler_advances_every_n_batches_then_stays_in_the_last_stage():
    stages = curriculum_stages(list(range(12, 0, -1)), 3, "exclusive")  # 4 pairs per stage
    sampler = CurriculumBatchSampler(stages, batches_per_stage=3, batch_size=2, seed=0)
    batches = list(islice(iter(sampler), 12))
    assert [stage_of(stages, b) for b in batches] == [{0}] * 3 + [{1}] * 3 + [{2}] * 6
    assert all(len(b) == 2 for b in batches)
    assert sampler.stage_at(5).index == 1 and sampler.stage_at(1000).index == 2


def test_resume_from_any_position_continues_the_same_sequence():
    stages = curriculum_stages([float(g) for g in range(10)], 2, "cumulative")
    full = list(islice(iter(CurriculumBatchSampler(stages, 4, 2, seed=3)), 14))
    for start in (1, 4, 7, 11):
        resumed = list(islice(iter(CurriculumBatchSampler(stages, 4, 2, seed=3, start=start)), 14 - start))
        assert resumed == full[start:]


def test_processes_get_disjoint_batches_of_the_same_stage():
    stages = curriculum_stages([float(g) for g in range(16)], 2, "exclusive")
    ranks = [list(islice(iter(CurriculumBatchSampler(stages, 2, 2, seed=1, process_index=r, num_processes=2)), 4))
             for r in (0, 1)]
    for step in range(4):
        a, b = ({i for i, _ in ranks[r][step]} for r in (0, 1))
        assert not a & b
        assert stage_of(stages, ranks[0][step]) == stage_of(stages, ranks[1][step]) == {step // 2}


class IndexDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 40

    def __getitem__(self, key):
        index, _epoch = key
        return index


def test_dataloader_workers_see_the_stage_change():
    stages = curriculum_stages([float(g) for g in range(40)], 2, "exclusive")  # stage 0: pairs 39..20
    sampler = CurriculumBatchSampler(stages, batches_per_stage=5, batch_size=4, seed=0)
    loader = torch.utils.data.DataLoader(IndexDataset(), batch_sampler=sampler, num_workers=2)
    seen = [batch.tolist() for batch in islice(iter(loader), 10)]
    assert all(index >= 20 for batch in seen[:5] for index in batch)
    assert all(index < 20 for batch in seen[5:] for index in batch)


def test_bad_curricula_are_clear_errors():
    with pytest.raises(ValueError, match="cannot fill 6 curriculum stages"):
        curriculum_stages(GAPS, 6)
    with pytest.raises(ValueError, match="mode must be one of"):
        curriculum_stages(GAPS, 2, "mixed")
    with pytest.raises(ValueError, match=">= 0"):
        curriculum_stages([0.1, -0.2], 1)
    with pytest.raises(ValueError, match="batches_per_stage"):
        CurriculumBatchSampler(curriculum_stages(GAPS, 1), 0, 1, 0)
