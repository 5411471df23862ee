"""What the data modules hand to DataLoader: an index dataset and a length-bucketing batch sampler."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset, Sampler


class IndexDataset(Dataset):
    """The example indices 0..n-1 only: the data module's collate function gathers a whole batch
    with array indexing, never a Python loop per example."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class LengthBucketBatches(Sampler):
    """Shuffled batches of similar-length sequences, so padding (wasted work) stays small.

    Each epoch: shuffle the rows, cut them into pools of `pool_batches` batches, sort each pool by
    length, cut it into batches and shuffle the batch order.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, pool_batches: int = 32, seed: int = 0):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.pool = batch_size * pool_batches
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self):
        order = self.rng.permutation(len(self.lengths))
        batches = []
        for start in range(0, len(order), self.pool):
            pool = order[start:start + self.pool]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            batches += [pool[i:i + self.batch_size].tolist() for i in range(0, len(pool), self.batch_size)]
        for b in self.rng.permutation(len(batches)):
            yield batches[b]
