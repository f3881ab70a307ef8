"""`NameCache` bookkeeping: what it trusts, for how long, what changes drop, its bounds. Explicit times."""

from __future__ import annotations

import pytest

from pfs.backends import Entry, Kind
from pfs.fs.names import (
    MAX_LISTING_ENTRIES,
    MAX_LISTINGS,
    MAX_NEGATIVE_ENTRIES,
    MAX_RELIST_ENTRIES,
    STATS_BEFORE_LISTING,
    NameCache,
)

pytestmark = pytest.mark.unit  # in process, no kernel: `pytest -m unit`

TTL = 10.0


def _files(*names: str) -> dict[str, Entry]:
    return {name: Entry(name, Kind.FILE, len(name), 1) for name in names}


def _many(count: int) -> dict[str, Entry]:
    entry = Entry("x", Kind.FILE)
    return {str(i): entry for i in range(count)}


def test_a_listing_is_trusted_for_the_ttl_and_not_after():
    names = NameCache(TTL)
    entries = _files("a", "b")
    names.keep("d", entries, at=100.0)
    for now in (100.0, 105.0, 109.999):
        listed = names.listing("d", now)
        assert listed is not None and listed.at == 100.0 and listed.entries == entries
    assert names.listing("d", 110.0) is None
    assert names.listing("d", 500.0) is None
    assert names.listing("other", 100.0) is None


def test_a_kept_listing_is_returned_at_any_age_until_replaced():
    names = NameCache(TTL)
    assert names.kept_listing("d") is None
    names.keep("d", _files("a"), at=1.0)
    old = names.kept_listing("d")
    assert old is not None and set(old.entries) == {"a"} and names.listing("d", 1000.0) is None
    names.keep("d", _files("a", "b"), at=1000.0)
    new = names.kept_listing("d")
    assert new is not None and new.at == 1000.0 and set(new.entries) == {"a", "b"}
    assert names.listing("d", 1005.0) == new


def test_a_zero_ttl_trusts_no_listing_and_no_missing_name():
    names = NameCache(0.0)
    names.keep("d", _files("a"), at=5.0)
    names.mark_missing("d/x", 5.0)
    assert names.listing("d", 5.0) is None and not names.is_missing("d/x", 5.0)
    assert names.kept_listing("d") is not None


def test_a_missing_name_stays_missing_for_the_ttl():
    names = NameCache(TTL)
    assert not names.is_missing("d/x", 100.0)
    names.mark_missing("d/x", 100.0)
    assert names.is_missing("d/x", 100.0) and names.is_missing("d/x", 109.9)
    assert not names.is_missing("d/x", 110.0)
    assert not names.is_missing("d/y", 100.0)
    names.mark_missing("d/x", 120.0)  # asked again later: missing again, from then
    assert names.is_missing("d/x", 125.0) and not names.is_missing("d/x", 130.0)


def test_a_name_this_mount_changes_or_creates_is_no_longer_missing():
    names = NameCache(TTL)
    names.mark_missing("d/x", 100.0)
    names.mark_missing("d/y", 100.0)
    names.changed("d/x")
    names.created("d/y", Entry("y", Kind.FILE, 3, 1))
    assert not names.is_missing("d/x", 101.0) and not names.is_missing("d/y", 101.0)


def test_created_adds_the_new_file_to_its_directory_s_kept_listing():
    names = NameCache(TTL)
    names.keep("d", _files("a"), at=100.0)
    names.keep("e", _files("a"), at=100.0)
    new = Entry("new", Kind.FILE, 42, 7)
    names.created("d/new", new)
    listed = names.listing("d", 105.0)
    assert listed is not None and listed.entries["new"] == new and listed.at == 100.0  # trusted as long
    assert set(listed.entries) == {"a", "new"}
    other = names.kept_listing("e")
    assert other is not None and set(other.entries) == {"a"}
    names.created("d/new", Entry("new", Kind.FILE, 43, 8))  # created again: the newest entry
    listed = names.kept_listing("d")
    assert listed is not None and listed.entries["new"].size == 43


def test_created_reaches_an_expired_kept_listing_and_the_root_and_lists_nothing_new():
    names = NameCache(TTL)
    names.keep("d", _files("a"), at=0.0)
    names.keep("", _files("top"), at=100.0)
    names.created("d/b", Entry("b", Kind.FILE))
    names.created("top2", Entry("top2", Kind.FILE))
    names.created("unlisted/c", Entry("c", Kind.FILE))
    old = names.kept_listing("d")
    assert old is not None and set(old.entries) == {"a", "b"}
    root = names.listing("", 101.0)
    assert root is not None and set(root.entries) == {"top", "top2"}
    assert names.kept_listing("unlisted") is None


def test_changed_drops_the_listing_of_the_directory_and_nothing_else():
    names = NameCache(TTL)
    for directory in ("", "d", "d/sub", "e"):
        names.keep(directory, _files("a"), at=100.0)
    names.changed("d/a")
    assert names.kept_listing("d") is None and names.listing("d", 101.0) is None
    for directory in ("", "d/sub", "e"):
        assert names.listing(directory, 101.0) is not None
    names.changed("top")  # a name at the root: the root's listing
    assert names.kept_listing("") is None and names.kept_listing("e") is not None


def test_forget_directory_drops_that_listing_only():
    names = NameCache(TTL)
    names.keep("d", _files("a"), at=100.0)
    names.keep("d/sub", _files("a"), at=100.0)
    names.mark_missing("d/x", 100.0)
    names.forget_directory("d")
    names.forget_directory("never-listed")
    assert names.kept_listing("d") is None
    assert names.listing("d/sub", 101.0) is not None and names.is_missing("d/x", 101.0)


def test_clear_listings_drops_every_listing_but_not_missing_names():
    names = NameCache(TTL)
    for i in range(5):
        names.keep(f"d{i}", _files("a"), at=100.0)
    names.mark_missing("d0/x", 100.0)
    names.clear_listings()
    assert all(names.kept_listing(f"d{i}") is None for i in range(5))
    assert names.is_missing("d0/x", 101.0)


def test_the_generation_counts_the_changes_made_through_the_mount():
    names = NameCache(TTL)
    assert names.generation == 0
    names.changed("d/a")
    assert names.generation == 1
    names.created("d/b", Entry("b", Kind.FILE))
    assert names.generation == 2
    names.clear_listings()
    assert names.generation == 3
    # What the backend said is no change made here.
    names.keep("d", _files("a"), at=1.0)
    names.mark_missing("d/x", 1.0)
    names.stat_ed("d", 1.0)
    names.listing("d", 2.0)
    names.kept_listing("d")
    names.is_missing("d/x", 2.0)
    names.worth_relisting("d", 2.0)
    assert names.generation == 3


def test_an_unlisted_directory_is_worth_listing_once_its_names_come_one_by_one():
    names = NameCache(TTL)
    for i in range(STATS_BEFORE_LISTING):
        assert not names.worth_relisting("d", 100.0 + i)
        names.stat_ed("d", 100.0 + i)
    assert names.worth_relisting("d", 100.0 + STATS_BEFORE_LISTING)
    assert not names.worth_relisting("other", 100.0 + STATS_BEFORE_LISTING)
    assert not names.worth_relisting("d", 100.0 + TTL)  # the names came too long ago


def test_names_stat_ed_across_ttls_start_counting_again():
    names = NameCache(TTL)
    for i in range(STATS_BEFORE_LISTING - 1):
        names.stat_ed("d", 100.0 + i)
    names.stat_ed("d", 100.0 + TTL + 1)  # a new count, from this one
    assert not names.worth_relisting("d", 100.0 + TTL + 2)
    for i in range(STATS_BEFORE_LISTING - 1):
        names.stat_ed("d", 100.0 + TTL + 2 + i)
    assert names.worth_relisting("d", 100.0 + TTL + 5)


def test_a_listing_kept_resets_the_count_of_names_stat_ed():
    names = NameCache(TTL)
    for i in range(STATS_BEFORE_LISTING):
        names.stat_ed("d", 100.0 + i)
    names.keep("d", _files("a"), at=104.0)
    names.forget_directory("d")
    assert not names.worth_relisting("d", 105.0)


def test_an_expired_small_listing_is_worth_taking_again_and_a_big_one_is_not():
    names = NameCache(TTL)
    names.keep("small", _many(MAX_RELIST_ENTRIES), at=100.0)
    names.keep("big", _many(MAX_RELIST_ENTRIES + 1), at=100.0)
    assert not names.worth_relisting("small", 109.0)  # still fresh
    assert not names.worth_relisting("big", 109.0)
    assert names.worth_relisting("small", 110.0)
    assert not names.worth_relisting("big", 110.0)
    assert names.listing("big", 109.0) is not None  # a big listing still answers while fresh


def test_at_most_max_listings_are_kept_the_least_recently_kept_leave_first():
    names = NameCache(TTL)
    for i in range(MAX_LISTINGS):
        names.keep(f"d{i}", _files("a"), at=100.0)
    names.keep("d0", _files("a", "b"), at=101.0)  # kept again: now the newest
    names.listing("d1", 101.0)  # looking does not make it any newer
    names.keep("extra", _files("a"), at=102.0)
    assert names.kept_listing("d1") is None
    kept = names.kept_listing("d0")
    assert kept is not None and set(kept.entries) == {"a", "b"}
    assert names.kept_listing("extra") is not None and names.kept_listing("d2") is not None
    assert sum(names.kept_listing(f"d{i}") is not None for i in range(MAX_LISTINGS)) == MAX_LISTINGS - 1


def test_a_directory_bigger_than_the_bound_is_not_held():
    names = NameCache(TTL)
    names.keep("edge", _many(MAX_LISTING_ENTRIES), at=100.0)
    names.keep("huge", _many(MAX_LISTING_ENTRIES + 1), at=100.0)
    edge = names.listing("edge", 101.0)
    assert edge is not None and len(edge.entries) == MAX_LISTING_ENTRIES
    assert names.listing("huge", 101.0) is None and names.kept_listing("huge") is None
    assert not names.worth_relisting("huge", 200.0)  # nothing kept: asked name by name


def test_a_directory_grown_beyond_the_bound_drops_its_older_listing():
    names = NameCache(TTL)
    names.keep("d", _files("a"), at=100.0)
    names.keep("d", _many(MAX_LISTING_ENTRIES + 1), at=120.0)  # listed again: now too big to hold
    assert names.kept_listing("d") is None
    assert not names.worth_relisting("d", 121.0)


def test_missing_names_are_bounded():
    names = NameCache(TTL)
    for i in range(MAX_NEGATIVE_ENTRIES):
        names.mark_missing(f"d/{i}", 100.0)
    assert names.is_missing("d/0", 101.0) and names.is_missing(f"d/{MAX_NEGATIVE_ENTRIES - 1}", 101.0)
    names.mark_missing("d/one-more", 100.0)  # full: what was kept is dropped, the new one is kept
    assert not names.is_missing("d/0", 101.0)
    assert names.is_missing("d/one-more", 101.0)
