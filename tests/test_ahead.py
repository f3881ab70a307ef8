"""`ReadAhead`: which files of a directory are made ready ahead of their open (pure bookkeeping, no I/O)."""

from __future__ import annotations

import pytest

from pfs.backends import Entry, Kind
from pfs.fs.ahead import PROVEN, RAMP, ReadAhead
from pfs.fs.names import Listing

pytestmark = pytest.mark.unit  # in process, no kernel: `pytest -m unit`

BLOCK = 1 << 20


def _listing(count: int, size: int = 100) -> Listing:
    entries = {f"f{i:03d}": Entry(f"f{i:03d}", Kind.FILE, size, 1) for i in range(count)}
    entries["sub"] = Entry("sub", Kind.DIR)
    return Listing(0.0, entries)


class Recorder:
    def __init__(self, room: int = 1_000) -> None:
        self.started: list[str] = []
        self.room = room

    def __call__(self, path: str, entry: Entry) -> bool:
        if self.room <= 0:
            return False
        self.room -= 1
        self.started.append(path)
        return True


def test_a_directory_read_in_order_is_made_ready_a_window_ahead():
    listing, start = _listing(60), Recorder()
    ahead = ReadAhead(start, BLOCK, window=4)
    ahead.opened("d/f000", listing)
    ahead.opened("d/f001", listing)
    assert start.started == []  # two opens are no order yet
    ahead.opened("d/f002", listing)
    assert start.started == ["d/f003", "d/f004", "d/f005", "d/f006"]
    ahead.opened("d/f003", listing)  # three still ready ahead: nothing yet
    assert len(start.started) == 4
    ahead.opened("d/f004", listing)  # half of them read: the next half window together
    assert start.started[-2:] == ["d/f007", "d/f008"] and len(start.started) == 6
    ahead.opened("d/f006", listing)  # a skipped file still follows the reader
    assert start.started[-2:] == ["d/f009", "d/f010"]


def test_the_window_grows_with_each_open_in_order():
    listing, start = _listing(200), Recorder()
    ahead = ReadAhead(start, BLOCK, window=4 * RAMP)
    for i in range(3):
        ahead.opened(f"f{i:03d}", listing)
    assert len(start.started) == RAMP  # the first window
    for i in range(3, 3 + 4 * RAMP):
        ahead.opened(f"f{i:03d}", listing)
    ready = int(start.started[-1][1:]) - (2 + 4 * RAMP)
    assert 2 * RAMP <= ready <= 4 * RAMP  # grown to the whole window, started half of it at a time


def test_jumps_start_nothing():
    listing, start = _listing(100), Recorder()
    ahead = ReadAhead(start, BLOCK, window=4)
    for i in (50, 7, 93, 20, 61, 3, 88):  # a shuffled sampler
        ahead.opened(f"f{i:03d}", listing)
    assert start.started == []


def test_an_open_that_lands_just_after_another_now_and_then_starts_nothing():
    listing, start = _listing(100), Recorder()
    ahead = ReadAhead(start, BLOCK, window=4)
    for i in (50, 51, 7, 93, 8, 61, 30, 94, 62):  # shuffled readers: single coincidences of order
        ahead.opened(f"f{i:03d}", listing)
    assert start.started == []


def test_while_files_made_ready_go_unopened_only_a_reader_proven_in_order_starts_more():
    listing, start = _listing(100), Recorder()
    ahead = ReadAhead(start, BLOCK, window=4, pays=lambda: False)
    for i in (50, 51, 52, 53, 7, 30, 55, 80, 57):  # chance order, and opens landing ahead of it
        ahead.opened(f"f{i:03d}", listing)
    assert start.started == []
    for i in range(10, 10 + PROVEN):
        ahead.opened(f"f{i:03d}", listing)
    assert start.started == []  # PROVEN - 1 opens in a row after the first
    ahead.opened(f"f{10 + PROVEN:03d}", listing)
    assert start.started == [f"f{i:03d}" for i in range(11 + PROVEN, 15 + PROVEN)]


def test_readers_of_one_directory_are_followed_apart():
    listing, start = _listing(100), Recorder()
    ahead = ReadAhead(start, BLOCK, window=2)
    for i in range(4):
        ahead.opened(f"f{i:03d}", listing)
        ahead.opened(f"f{50 + i:03d}", listing)
    assert start.started == ["f003", "f004", "f053", "f054", "f005", "f055"]


def test_readers_sharing_a_directory_out_of_step_are_followed_as_one():
    """Eight readers taking every eighth file open them nearly in order, one a few files ahead, another a few
    behind: once followed, each open within what was made ready continues the one stream, and every file is
    made ready before it is opened, once."""
    listing, start = _listing(200), Recorder()
    ahead = ReadAhead(start, BLOCK, window=32)
    for i in range(3):
        ahead.opened(f"f{i:03d}", listing)
    late: list[int] = []
    for base in range(3, 150, 4):
        for i in (base + 3, base, base + 2):  # one ahead; base + 1 comes four opens later
            assert f"f{i:03d}" in start.started
            ahead.opened(f"f{i:03d}", listing)
        if late:
            ahead.opened(f"f{late.pop():03d}", listing)
        late.append(base + 1)
    assert len(start.started) == len(set(start.started))


def test_no_room_stops_the_window_until_the_next_open():
    listing, start = _listing(30), Recorder(room=1)
    ahead = ReadAhead(start, BLOCK, window=4)
    for i in range(3):
        ahead.opened(f"f{i:03d}", listing)
    assert start.started == ["f003"]
    start.room = 10
    ahead.opened("f003", listing)
    assert start.started == ["f003", "f004", "f005", "f006", "f007"]


def test_the_window_ends_with_the_directory_and_skips_directories():
    listing, start = _listing(5), Recorder()
    ahead = ReadAhead(start, BLOCK, window=8)
    for i in range(3):
        ahead.opened(f"f{i:03d}", listing)
    assert start.started == ["f003", "f004"]


def test_big_files_are_made_ready_only_as_far_ahead_as_the_byte_window():
    listing, start = _listing(30, size=10 * BLOCK), Recorder()
    ahead = ReadAhead(start, BLOCK, window=8, window_bytes=3 * BLOCK)  # each costs its first block
    for i in range(3):
        ahead.opened(f"f{i:03d}", listing)
    assert start.started == ["f003", "f004", "f005"]
    ahead.opened("f003", listing)  # one read: room for one more
    assert start.started[-1] == "f006" and len(start.started) == 4
    tight = Recorder()
    ahead = ReadAhead(tight, BLOCK, window=8, window_bytes=1)
    for i in range(3):
        ahead.opened(f"f{i:03d}", listing)
    assert tight.started == ["f003"]  # the next file always
