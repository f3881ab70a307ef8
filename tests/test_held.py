"""Names held in the kernel past the metadata TTL on a read-only mount, in process: which directories are
listed again when, and which names the kernel must drop after a listing."""

from __future__ import annotations

import pytest

from pfs.backends import Entry, Kind
from pfs.fs.held import HOLD_S, HeldNames
from pfs.fs.inodes import Inode, InodeTable

pytestmark = pytest.mark.unit  # in process, no kernel: `pytest -m unit`

S = 10**9
TTL = 10.0


def _table() -> InodeTable:
    table = InodeTable(0)
    table.per_version = True
    return table


def _handed(table: InodeTable, held: HeldNames, path: str, entry: Entry, now: float) -> Inode:
    inode = table.add(path, entry)
    inode.lookups += 1
    held.handed(inode, now)
    return inode


def test_a_directory_is_listed_again_every_ttl_until_its_names_expire_in_the_kernel():
    table = _table()
    held = HeldNames(table, TTL)
    _handed(table, held, "d/a", Entry("a", Kind.FILE, 1, S), now=100.0)
    assert held.due(105.0) == []
    assert held.due(110.0) == ["d"]
    held.compare("d", {"a": Entry("a", Kind.FILE, 1, S)}, listed_at=110.0)
    assert held.due(115.0) == []
    assert held.due(120.0) == ["d"]
    assert held.due(100.0 + HOLD_S) == [] and len(held) == 0  # every name handed out has expired


def test_handing_out_a_name_again_keeps_its_directory_followed():
    table = _table()
    held = HeldNames(table, TTL)
    inode = _handed(table, held, "d/a", Entry("a", Kind.FILE, 1, S), now=0.0)
    held.handed(inode, HOLD_S - 1)
    assert held.due(HOLD_S + 5) == ["d"]


def test_changed_gone_and_retyped_names_are_dropped_and_unchanged_ones_kept():
    table = _table()
    held = HeldNames(table, TTL)
    same = _handed(table, held, "d/same", Entry("same", Kind.FILE, 1, S), 0.0)
    grown = _handed(table, held, "d/grown", Entry("grown", Kind.FILE, 1, S), 0.0)
    touched = _handed(table, held, "d/touched", Entry("touched", Kind.FILE, 1, S), 0.0)
    gone = _handed(table, held, "d/gone", Entry("gone", Kind.FILE, 1, S), 0.0)
    retyped = _handed(table, held, "d/retyped", Entry("retyped", Kind.FILE, 1, S), 0.0)
    sub = _handed(table, held, "d/sub", Entry("sub", Kind.DIR, 0, S), 0.0)
    listing = {
        "same": Entry("same", Kind.FILE, 1, S),
        "grown": Entry("grown", Kind.FILE, 2, S),
        "touched": Entry("touched", Kind.FILE, 1, 5 * S),
        "retyped": Entry("retyped", Kind.DIR, 0, S),
        "sub": Entry("sub", Kind.DIR, 0, 9 * S),  # a directory's time moves with its names: same inode
        "new": Entry("new", Kind.FILE, 1, S),  # never handed out: nothing for the kernel to drop
    }
    stale = held.compare("d", listing, listed_at=TTL)
    assert set(stale) == {grown, touched, gone, retyped}
    assert held.compare("d", listing, listed_at=2 * TTL) == []  # dropped once, then no longer held
    assert same.lookups and sub.lookups


def test_a_directory_gone_drops_every_name_and_forgotten_or_replaced_inodes_are_not_held():
    table = _table()
    held = HeldNames(table, TTL)
    forgotten = _handed(table, held, "d/f", Entry("f", Kind.FILE, 1, S), 0.0)
    replaced = _handed(table, held, "d/r", Entry("r", Kind.FILE, 1, S), 0.0)
    kept = _handed(table, held, "d/k", Entry("k", Kind.FILE, 1, S), 0.0)
    table.forget(forgotten.ino, 1)
    assert table.add("d/r", Entry("r", Kind.FILE, 2, S)) is not replaced  # a lookup told the kernel
    assert held.compare("d", None, listed_at=TTL) == [kept]
    assert held.compare("elsewhere", None, listed_at=TTL) == []
