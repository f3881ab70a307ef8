"""A map-style dataset of small files for the PyTorch tests: sample i is file i's bytes, known in advance."""

from __future__ import annotations

import hashlib

import torch

COUNT = 240
CLASSES = 4


def name_of(index: int) -> str:
    return f"train/c{index % CLASSES}/s{index:04d}.bin"


def expected(index: int) -> bytes:
    seed = hashlib.sha256(str(index).encode()).digest()
    return seed * (300 + index % 37)  # 9.6-12 KB, each file its own bytes


def as_list(batch: list) -> list:
    """Samples of different lengths: a batch stays a list."""
    return batch


class Files(torch.utils.data.Dataset):
    def __init__(self, root: str) -> None:
        self.root = root

    def __len__(self) -> int:
        return COUNT

    def path_of(self, index: int) -> str:
        return f"{self.root}/{name_of(index)}"

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        with open(self.path_of(index), "rb") as f:
            return index, torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
