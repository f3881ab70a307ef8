"""Hints: files a reader names ahead, fetched just ahead of it.

`Hints` under trio without a kernel (fetches recorded, not made), then real mounts on the session's S3
server: the control surface by hand, on read-write and read-only mounts, and `pfs prefetch`.
"""

from __future__ import annotations

import os
import random
import threading

import pytest
import trio
import trio.testing

from pfs.backends import Entry, Kind
from pfs.counters import Stats
from pfs.fs import hints as hints_module
from pfs.fs.hints import QUEUED, TRAIL, TRIM_BATCH, Hints
from pfs.mount import control
from tests.conftest import s3_case, unique
from tests.mounting import Mount, run_pfs

BLOCK = 1 << 20
SIZE = 100  # every file's size in the unit tests


class Fetcher:
    """Records what `Hints` starts and drops; `room` files at most (the memory budget)."""

    def __init__(self, room: int = 1_000_000, missing: tuple[str, ...] = ()) -> None:
        self.started: list[str] = []
        self.dropped: list[str] = []
        self.room = room
        self.missing = missing

    async def resolve(self, path: str) -> Entry | None:
        await trio.sleep(0)
        return None if path in self.missing else Entry(path.rpartition("/")[2], Kind.FILE, SIZE, 1)

    def start(self, path: str, entry: Entry) -> bool:
        if self.room <= 0:
            return False
        self.room -= 1
        self.started.append(path)
        return True


def _hints(fetcher: Fetcher, window_files: int) -> tuple[Hints, Stats]:
    stats = Stats()
    hints = Hints(window_files * SIZE, BLOCK, stats, fetcher.resolve, fetcher.start, fetcher.dropped.append)
    return hints, stats


def _names(indices) -> list[str]:
    return [f"d/f{i:05d}" for i in indices]


def _indices(paths: list[str]) -> list[int]:
    return [int(p.rpartition("f")[2]) for p in paths]


def _run(test) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await test(nursery)
            nursery.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.unit
def test_a_posted_list_is_fetched_one_window_ahead_and_follows_the_reader():
    fetcher = Fetcher()
    hints, stats = _hints(fetcher, window_files=64)

    async def test(nursery) -> None:
        nursery.start_soon(hints.run)
        order = _names(random.Random(1).sample(range(1000), 200))
        assert hints.post(7, order, restart=True) == 200
        await trio.testing.wait_all_tasks_blocked()
        assert fetcher.started == order[:8]  # before any read: the start of the list, a first share
        assert hints.held == 8 * SIZE
        for path in order[:50]:
            hints.opened(path)
            await trio.testing.wait_all_tasks_blocked()
        # One reader: its window grows to the whole window ahead of it, refilled half of it at a time.
        assert fetcher.started == order[: len(fetcher.started)]
        assert 50 + 32 <= len(fetcher.started) <= 50 + 64
        counters = stats.snapshot()
        assert counters["hint_hits"] == 50 and counters.get("hint_misses", 0) == 0
        assert counters["hint_paths"] == 200 and counters["hint_fetches"] == len(fetcher.started)

    _run(test)


@pytest.mark.unit
def test_a_list_never_read_costs_one_window():
    fetcher = Fetcher()
    hints, _ = _hints(fetcher, window_files=64)

    async def test(nursery) -> None:
        nursery.start_soon(hints.run)
        hints.post(1, _names(range(10_000)), restart=True)
        for _ in range(5):
            await trio.sleep(hints_module.RETRY_S)
        assert len(fetcher.started) == 64 // hints_module.FIRST_READERS

    _run(test)


@pytest.mark.unit
def test_readers_of_batches_are_each_followed():
    """Eight DataLoader workers, each reading its own batch of 64 in order: each gets files ahead."""
    fetcher = Fetcher()
    hints, stats = _hints(fetcher, window_files=64)

    async def test(nursery) -> None:
        nursery.start_soon(hints.run)
        order = _names(range(2048))
        hints.post(1, order, restart=True)
        await trio.testing.wait_all_tasks_blocked()
        for k in range(64):
            for worker in range(8):
                hints.opened(order[worker * 64 + k])
                await trio.testing.wait_all_tasks_blocked()
        counters = stats.snapshot()
        # Each worker's first file is a miss (nothing told where it would start); one of its first few may
        # be too, while its share of the window is made; all the rest were fetched before they were opened.
        assert counters["hint_hits"] >= 8 * 64 - 8 * 3
        assert hints.held <= 64 * SIZE

    _run(test)


@pytest.mark.unit
def test_interleaved_out_of_step_readers_keep_one_window():
    fetcher = Fetcher()
    hints, stats = _hints(fetcher, window_files=32)

    async def test(nursery) -> None:
        nursery.start_soon(hints.run)
        order = _names(range(1000))
        hints.post(1, order, restart=True)
        await trio.testing.wait_all_tasks_blocked()
        rng = random.Random(3)
        for start in range(0, 800, 8):  # eight workers taking every eighth sample, arriving in any order
            for i in rng.sample(range(start, start + 8), 8):
                hints.opened(order[i])
            await trio.testing.wait_all_tasks_blocked()
        counters = stats.snapshot()
        # Misses only while the one cursor's share ramps up (it starts small: more readers may come).
        assert counters["hint_hits"] >= 800 - 32 and max(_indices(fetcher.started)) >= 800
        assert counters.get("hint_dropped", 0) == 0 and hints.held <= 32 * SIZE

    _run(test)


@pytest.mark.unit
def test_files_a_reader_skips_leave_the_window_and_are_dropped_with_the_list():
    fetcher = Fetcher()
    hints, stats = _hints(fetcher, window_files=16)

    async def test(nursery) -> None:
        nursery.start_soon(hints.run)
        order = _names(range(500))
        hints.post(1, order, restart=True)
        await trio.testing.wait_all_tasks_blocked()
        for path in order[::2][:150]:  # every other file is never opened
            hints.opened(path)
            await trio.testing.wait_all_tasks_blocked()
        assert max(_indices(fetcher.started)) >= 298 - 8  # what it skipped left the window: still ahead
        assert fetcher.dropped == []  # kept for a late open, until the list goes
        hints.post(1, [], restart=True)
        assert stats.snapshot()["hint_dropped"] == len(fetcher.dropped) >= 32
        assert set(fetcher.dropped) <= set(order[1::2]) | set(order[299:])  # skipped, or still ahead

    _run(test)


@pytest.mark.unit
def test_posts_restart_bound_and_skip_what_is_missing():
    fetcher = Fetcher(missing=("d/f00001",))
    hints, stats = _hints(fetcher, window_files=4)

    async def test(nursery) -> None:
        nursery.start_soon(hints.run)
        assert hints.post(1, _names(range(QUEUED + 10)), restart=True) == QUEUED  # the rest: later
        assert hints.post(1, _names(range(5)), restart=False) == 0
        await trio.testing.wait_all_tasks_blocked()
        assert hints.post(1, _names(range(100, 110)), restart=True) == 10  # a new epoch replaces it
        await trio.testing.wait_all_tasks_blocked()
        assert fetcher.dropped == _names([0, 2, 3, 4])  # the old epoch's fetched files were let go
        assert fetcher.started[-4:] == _names(range(100, 104))
        assert hints.post(2, _names(range(3)), restart=True) == 3  # another poster: its own list
        await trio.testing.wait_all_tasks_blocked()
        assert "d/f00001" not in fetcher.started and stats.snapshot()["hint_not_found"] == 1
        hints.post(1, [], restart=True)
        hints.post(2, [], restart=True)
        assert not hints.posted and hints.held == 0

    _run(test)


@pytest.mark.unit
def test_a_long_list_read_to_its_end_holds_a_bounded_part_of_it():
    fetcher = Fetcher()
    hints, stats = _hints(fetcher, window_files=8)
    total = QUEUED + TRAIL + 3 * TRIM_BATCH
    order = _names(range(total))

    async def test(nursery) -> None:
        posted = hints.post(1, order, restart=True)
        held = []
        for i, path in enumerate(order):
            hints.opened(path)
            if i % 1000 == 0:
                posted += hints.post(1, order[posted:], restart=False)
                held.append(len(hints._streams[1].paths))
        assert posted == total and stats.snapshot()["hint_misses"] == total
        assert max(held) <= QUEUED + TRAIL + TRIM_BATCH + 1000

    _run(test)


@pytest.mark.unit
def test_no_room_in_the_memory_budget_is_tried_again():
    fetcher = Fetcher(room=2)
    hints, _ = _hints(fetcher, window_files=8)

    async def test(nursery) -> None:
        nursery.start_soon(hints.run)
        hints.post(1, _names(range(20)), restart=True)
        await trio.testing.wait_all_tasks_blocked()
        assert len(fetcher.started) == 2
        fetcher.room = 100
        await trio.sleep(2 * hints_module.RETRY_S)
        assert len(fetcher.started) == hints_module.MIN_SHARE  # a new list's first share

    _run(test)


# ---- real mounts -------------------------------------------------------------------------------------------


def _dataset(case, count: int) -> dict[str, bytes]:
    files = {f"train/c{i % 5}/s{i:04d}.bin": os.urandom(20_000 + i) for i in range(count)}
    for name, data in files.items():
        case.raw.put(name, data)
    return files


def _read_in_order(root: str, order: list[str], files: dict[str, bytes], readers: int = 4) -> None:
    shares = [order[i::readers] for i in range(readers)]
    failures: list[str] = []

    def read(share: list[str]) -> None:
        for name in share:
            with open(f"{root}/{name}", "rb") as f:
                if f.read() != files[name]:
                    failures.append(name)

    threads = [threading.Thread(target=read, args=(share,)) for share in shares]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


@pytest.fixture
def case(backend_case):
    return backend_case.subcase(unique("h"))


@pytest.mark.parametrize("mode", ["rw", "ro"])
def test_a_shuffled_cold_epoch_is_fetched_ahead_through_the_control_surface(case, tmp_path, mode):
    """Object stores fetch each file's first block with one GET; file systems (file://, HDFS), whose
    versions their attributes tell, with a reader's first read."""
    count = 100 if case.name == "hdfs" else 300  # HDFS takes 0.4 s to write each file here
    files = _dataset(case, count)
    order = random.Random(5).sample(sorted(files), len(files))
    args = ("-o", "metadata_ttl=30" + (",ro" if mode == "ro" else ""))
    with Mount(case.uri, str(tmp_path / "m"), env=case.env, args=args) as m:
        os.listdir(f"{m.path}/train")
        relative = [n.removeprefix("train/") for n in order]
        assert control.post_hints(f"{m.path}/train", relative, True) == count
        _read_in_order(m.path, order, files)
        stats = control.stats(m.path)
    assert stats["hint_paths"] == count
    # A file a reader got to before its fetch started is a miss, and still correct: a local disk answers
    # so fast that readers outrun the fetches now and then.
    assert stats["hint_hits"] >= count * (0.8 if case.name == "file" else 0.95)
    assert stats["hint_hits"] + stats.get("hint_misses", 0) == count
    assert stats["prefetch_files_used"] >= stats["hint_hits"] - 10  # the opens used what was fetched
    if case.object_store:
        assert stats["backend_first_reads"] == count and stats.get("backend_opens", 0) == 0  # once each


def test_hints_on_a_file_not_a_directory_or_with_a_bad_name_are_refused(request, tmp_path):
    case = s3_case(request)
    case.raw.put("a.bin", b"x")
    with Mount(case.uri, str(tmp_path / "m"), env=case.env) as m:
        with pytest.raises(NotADirectoryError):
            os.getxattr(f"{m.path}/a.bin", control.HINTS_RESTART + b"b")
        with pytest.raises(OSError):
            os.getxattr(m.path, control.HINTS + b"?a.bin")
        assert int(os.getxattr(m.path, control.HINTS_RESTART + b"../x\n./a.bin\na.bin")) == 3
        assert control.stats(m.path)["hint_paths"] == 1


def test_pfs_prefetch_posts_a_list_and_reads_hit(request, tmp_path):
    case = s3_case(request)
    files = _dataset(case, 120)
    order = random.Random(6).sample(sorted(files), len(files))
    with Mount(case.uri, str(tmp_path / "m"), env=case.env) as m:
        listing = tmp_path / "order.txt"
        listing.write_text("".join(f"{m.path}/{n}\n" if i % 2 else f"{n}\n" for i, n in enumerate(order)))
        result = run_pfs("prefetch", m.path, "--from", str(listing))
        assert result.returncode == 0, result.stderr
        assert "120 paths posted" in result.stderr
        _read_in_order(m.path, order, files, readers=1)
        stats = control.stats(m.path)
    assert stats["hint_paths"] == 120 and stats["hint_hits"] >= 115


def test_pfs_prefetch_bad_input_is_one_line(tmp_path):
    listing = tmp_path / "order.txt"
    listing.write_text("a\n")
    result = run_pfs("prefetch", str(tmp_path), "--from", str(listing))
    assert result.returncode != 0 and result.stderr.strip() == f"pfs: error: {tmp_path} is not a pfs mount"
    missing = run_pfs("prefetch", str(tmp_path), "--from", str(tmp_path / unique("none")))
    assert missing.returncode != 0 and len(missing.stderr.strip().splitlines()) == 1
