"""The DataLoader scenarios: one epoch of a PyTorch `DataLoader` (worker processes, shuffled) whose samples
are the raw bytes of one file each, which is what a training job's input pipeline asks of a filesystem;
`loader-hints` wraps its sampler in pfs's `HintedSampler`, which tells a pfs mount the epoch's order.

Needs torch (CPU build; the `bench` extra, installed by scripts/setup.sh); without it the scenario is
skipped with one line saying so. Only directories can be read this way (mounted clients and local disk).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from typing import Any

SKIP_REASON = "torch is not installed (pip install -e '.[bench]'): the loader scenario is skipped"


def available() -> bool:
    return importlib.util.find_spec("torch") is not None


class _Files:
    """A map-style dataset: sample i is the bytes of file i (read by the worker process that asks)."""

    def __init__(self, root: str, files: list[str]) -> None:
        self.paths = [os.path.join(root, rel) for rel in files]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> bytes:
        with open(self.paths[index], "rb") as f:
            return f.read()


def order(count: int, seed: int) -> list[int]:
    """The epoch's order of samples: what `epoch`'s sampler draws."""
    import torch

    return torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()


def epoch(root: str, files: list[str], workers: int, seed: int, hints: bool = False) -> tuple[int, int]:
    """Run one shuffled epoch, telling pfs its order first with `hints` (pfs.torch); returns (samples,
    bytes)."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from pfs.torch import HintedSampler

    # torch advises no more workers than cores; a training job's loader uses 8 anyway (I/O bound).
    warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
    dataset: Any = _Files(root, files)  # map-style: what DataLoader asks of a dataset
    sampler: Any = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    if hints:
        sampler = HintedSampler(sampler, dataset.paths.__getitem__)
    loader = DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=workers, prefetch_factor=4)
    samples = nbytes = 0
    for sample in loader:
        samples += 1
        nbytes += len(sample)
    return samples, nbytes
