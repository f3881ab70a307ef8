"""`pfs.torch.HintedSampler` with real PyTorch DataLoaders (CPU) on a real S3-backed mount."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[torch]')")

from torch.utils.data import DataLoader, RandomSampler  # noqa: E402

from pfs.mount import control  # noqa: E402
from pfs.torch import HintedSampler  # noqa: E402
from tests.conftest import s3_case  # noqa: E402
from tests.mounting import Mount  # noqa: E402
from tests.torch_data import COUNT, Files, as_list, expected, name_of  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def mounted(request, tmp_path):
    case = s3_case(request)
    for index in range(COUNT):
        case.raw.put(name_of(index), expected(index))
    with Mount(case.uri, str(tmp_path / "m"), env=case.env, args=("-o", "metadata_ttl=30")) as m:
        yield m


def _epoch(loader: DataLoader) -> list[int]:
    read = []
    for batch in loader:
        for index, sample in batch:
            assert bytes(sample.numpy()) == expected(index), index
            read.append(index)
    return read


def test_a_shuffled_multi_worker_epoch_reads_every_sample_right_and_uses_the_hints(mounted):
    dataset = Files(mounted.path)
    generator = torch.Generator().manual_seed(3)
    sampler = HintedSampler(RandomSampler(dataset, generator=generator), dataset.path_of)
    loader = DataLoader(dataset, sampler=sampler, batch_size=8, num_workers=3, collate_fn=as_list)
    assert sorted(_epoch(loader)) == list(range(COUNT))
    first = control.stats(mounted.path)
    assert first["hint_paths"] == COUNT
    assert first["hint_hits"] >= COUNT * 0.8  # a worker's first file may come before its fetch
    assert first["backend_first_reads"] == COUNT  # each file fetched once: hinted, or by its own open
    assert sorted(_epoch(loader)) == list(range(COUNT))  # the next epoch: a new order, posted anew
    assert control.stats(mounted.path)["hint_paths"] == 2 * COUNT


def test_distributed_ranks_each_hint_their_own_share(mounted):
    ranks = 2
    command = [sys.executable, "-m", "tests.torch_rank", mounted.path]
    processes = [
        subprocess.Popen([*command, str(rank), str(ranks)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for rank in range(ranks)
    ]
    results = [json.loads(p.communicate(timeout=300)[0]) for p in processes]
    assert all(p.returncode == 0 for p in processes)
    shares = [set(r["read"]) for r in results]
    assert shares[0].isdisjoint(shares[1]) and shares[0] | shares[1] == set(range(COUNT))
    assert [r["wrong"] for r in results] == [[], []]
    stats = control.stats(mounted.path)
    assert stats["hint_paths"] == COUNT  # each rank posted its share only
    assert stats["hint_hits"] >= COUNT * 0.8


def test_outside_a_pfs_mount_the_sampler_only_yields(tmp_path):
    for index in range(COUNT):
        os.makedirs(os.path.dirname(tmp_path / name_of(index)), exist_ok=True)
        (tmp_path / name_of(index)).write_bytes(expected(index))
    dataset = Files(str(tmp_path))
    sampler = HintedSampler(RandomSampler(dataset), dataset.path_of)
    loader = DataLoader(dataset, sampler=sampler, batch_size=8, num_workers=2, collate_fn=as_list)
    assert sorted(_epoch(loader)) == list(range(COUNT))
    assert len(sampler) == COUNT
