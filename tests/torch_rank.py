"""One rank of a distributed-style job, in its own process: `python -m tests.torch_rank ROOT RANK RANKS`.

Reads its DistributedSampler share of the files under ROOT through a multi-worker DataLoader wrapped in
`HintedSampler`, and prints JSON: the indices it read and those whose bytes were not what `expected` says.
"""

from __future__ import annotations

import json
import sys

from torch.utils.data import DataLoader, DistributedSampler

from pfs.torch import HintedSampler
from tests.torch_data import Files, as_list, expected


def main(root: str, rank: int, ranks: int) -> None:
    dataset = Files(root)
    shard = DistributedSampler(dataset, num_replicas=ranks, rank=rank, shuffle=True, seed=11)
    sampler = HintedSampler(shard, dataset.path_of)
    sampler.set_epoch(1)
    loader = DataLoader(dataset, sampler=sampler, batch_size=4, num_workers=2, collate_fn=as_list)
    read, wrong = [], []
    for batch in loader:
        for index, sample in batch:
            read.append(index)
            if bytes(sample.numpy()) != expected(index):
                wrong.append(index)
    json.dump({"read": read, "wrong": wrong}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
