"""Deterministic, resumable data order for map-style datasets across processes.

Epoch ``e`` visits a permutation seeded by ``(seed, e)``. A global batch is ``batch_size x
num_processes`` consecutive indices of that permutation; process ``r`` takes the r-th slice. The
tail that does not fill a global batch is dropped, so every process sees the same number of
batches. Position ``m`` (micro-batches consumed since the start) fully determines where a resumed
run continues, so nothing about the data order needs saving.
"""

from __future__ import annotations

import torch


def batches_per_epoch(num_items: int, batch_size: int, num_processes: int) -> int:
    count = num_items // (batch_size * num_processes)
    if count == 0:
        raise ValueError(f"{num_items} pairs are fewer than one global batch "
                         f"({batch_size} per device x {num_processes} processes).")
    return count


def epoch_permutation(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_items, generator=generator)


class ResumableBatchSampler(torch.utils.data.Sampler):
    """Yields this process's batches of ``(index, epoch)`` from position ``start`` (in micro-batches) on, forever.

    The epoch travels with each index so that per-epoch augmentation reaches DataLoader workers
    (see :class:`EpochIndexed`); a sampler-side ``set_epoch`` would not.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, process_index: int = 0,
                 num_processes: int = 1, start: int = 0):
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.process_index, self.num_processes, self.start = process_index, num_processes, start
        self.per_epoch = batches_per_epoch(num_items, batch_size, num_processes)

    def __iter__(self):
        position = self.start
        while True:
            epoch, offset = divmod(position, self.per_epoch)
            order = epoch_permutation(self.num_items, self.seed, epoch)
            global_batch = self.batch_size * self.num_processes
            for batch in range(offset, self.per_epoch):
                begin = batch * global_batch + self.process_index * self.batch_size
                yield [(index, epoch) for index in order[begin:begin + self.batch_size].tolist()]
                position += 1


class EpochIndexed(torch.utils.data.Dataset):
    """Wraps a dataset with ``set_epoch``; ``self[(i, epoch)]`` sets the epoch, then returns item i."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]
