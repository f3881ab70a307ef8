"""`NameCache`'s choice between one HEAD per name and one listing, without a kernel (pure bookkeeping)."""

from __future__ import annotations

from pfs.backends import Entry, Kind
from pfs.fs.names import STATS_BEFORE_LISTING, NameCache


def test_a_directory_walked_by_path_is_listed_once_its_names_keep_coming():
    names = NameCache(ttl=10.0)
    for i in range(STATS_BEFORE_LISTING):
        assert not names.worth_relisting("d", now=100.0 + i)
        names.stat_ed("d", now=100.0 + i)
    assert names.worth_relisting("d", now=105.0)
    assert not names.worth_relisting("other", now=105.0)
    names.keep("d", {"f": Entry("f", Kind.FILE, 1, 1)}, at=105.0)
    assert not names.worth_relisting("d", now=106.0)  # listed and fresh
    assert names.worth_relisting("d", now=120.0)  # expired small listing: taken again


def test_names_asked_far_apart_stay_single_requests():
    names = NameCache(ttl=1.0)
    for i in range(3 * STATS_BEFORE_LISTING):
        names.stat_ed("d", now=10.0 * i)  # one per TTL: never a walk
        assert not names.worth_relisting("d", now=10.0 * i + 0.5)
