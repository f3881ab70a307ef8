"""What the backend said about names, trusted for the metadata TTL: directory listings and missing names.

A lookup of a name in a directory listed within the TTL is answered from that listing, and a name the
backend said is missing stays missing for the TTL. Changes made through the mount drop what they affect at
once. Pure bookkeeping, like the inode table: no I/O and no awaits.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from pfs.backends import Entry

MAX_LISTINGS = 4096  # directory listings kept for lookups
MAX_LISTING_ENTRIES = 200_000  # a bigger directory is listed again rather than held
MAX_NEGATIVE_ENTRIES = 100_000
MAX_RELIST_ENTRIES = 5_000  # an expired listing this small is taken again rather than one HEAD per name
STATS_BEFORE_LISTING = 4  # names of an unlisted directory asked one by one within the TTL: then list it


@dataclass(frozen=True)
class Listing:
    at: float  # monotonic time the backend was asked
    entries: dict[str, Entry]


class NameCache:
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._listings: OrderedDict[str, Listing] = OrderedDict()
        self._missing: dict[str, float] = {}  # path -> when the backend said it is missing
        # Counts the changes made through the mount: a backend request started before one must not answer
        # a request that comes after it (see Operations, where requests in flight are shared).
        self.generation = 0
        self._stats: dict[str, tuple[float, int]] = {}  # unlisted directory -> (since, names stat-ed)
        self._looked_ahead: dict[str, float] = {}  # directory -> `at` of the listing `walk_ahead` saw

    def listing(self, directory: str, now: float) -> Listing | None:
        """The listing of `directory` if it is still fresh."""
        listed = self._listings.get(directory)
        return listed if listed is not None and now - listed.at < self.ttl else None

    def kept_listing(self, directory: str) -> Listing | None:
        """The last listing of `directory` kept, however old."""
        return self._listings.get(directory)

    def worth_relisting(self, directory: str, now: float) -> bool:
        """A small directory listed before whose listing expired: one listing answers for all its names
        (a dataset being walked again), where asking for each would cost a request per file."""
        listed = self._listings.get(directory)
        if listed is None:  # never listed: once its names come one by one (a walk by path), list it
            since, count = self._stats.get(directory, (now, 0))
            return now - since < self.ttl and count >= STATS_BEFORE_LISTING
        return now - listed.at >= self.ttl and len(listed.entries) <= MAX_RELIST_ENTRIES

    def walk_ahead(self, directory: str, listed: Listing, now: float) -> str | None:
        """The directory to list again in the background now that `listed` (the fresh listing of
        `directory`) is first used: the next directory of the same parent in name order that this mount
        listed before (a tree walked again, as every epoch of a data set does), when that listing is small
        and past half the TTL. A walker then finds the next directory's names fresh instead of waiting for
        them. None when there is none, or when this listing was already asked about."""
        if not directory or self._looked_ahead.get(directory) == listed.at:
            return None
        if len(self._looked_ahead) >= MAX_LISTINGS:
            self._looked_ahead.clear()
        self._looked_ahead[directory] = listed.at
        parent = directory.rpartition("/")[0]
        prefix = f"{parent}/" if parent else ""
        # The kept listings say which siblings were walked before (the parent itself may never have been
        # listed: its names are asked one by one, a directory's walk apart).
        siblings = (p for p in self._listings if p > directory and p.startswith(prefix))
        following = min((p for p in siblings if "/" not in p[len(prefix) :]), default=None)
        if following is None:
            return None
        kept = self._listings[following]
        if now - kept.at < self.ttl / 2 or len(kept.entries) > MAX_RELIST_ENTRIES:
            return None
        return following

    def stat_ed(self, directory: str, now: float) -> None:
        """A name of `directory` was asked of the backend on its own."""
        since, count = self._stats.get(directory, (now, 0))
        if now - since >= self.ttl:
            since, count = now, 0
        if len(self._stats) >= MAX_LISTINGS:
            self._stats.clear()
        self._stats[directory] = (since, count + 1)

    def keep(self, directory: str, entries: dict[str, Entry], at: float) -> None:
        self._stats.pop(directory, None)
        if len(entries) > MAX_LISTING_ENTRIES:  # too big to hold: nor is an older, smaller one kept
            self._listings.pop(directory, None)
            return
        self._listings[directory] = Listing(at, entries)
        self._listings.move_to_end(directory)
        while len(self._listings) > MAX_LISTINGS:
            self._listings.popitem(last=False)

    def is_missing(self, path: str, now: float) -> bool:
        return now - self._missing.get(path, -self.ttl) < self.ttl

    def mark_missing(self, path: str, now: float) -> None:
        if len(self._missing) >= MAX_NEGATIVE_ENTRIES:
            self._missing.clear()
        self._missing[path] = now

    def forget_directory(self, directory: str) -> None:
        self._listings.pop(directory, None)

    def changed(self, path: str) -> None:
        """This mount changed the name `path`: forget what was kept about it and its directory."""
        self._missing.pop(path, None)
        self._listings.pop(path.rpartition("/")[0], None)
        self.generation += 1

    def created(self, path: str, entry: Entry) -> None:
        """This mount made the file `path` exist (its first upload): a kept listing of its directory gains
        it, so the next new names there are still answered from that listing (one request per file saved
        when many files are written)."""
        self._missing.pop(path, None)
        listed = self._listings.get(path.rpartition("/")[0])
        if listed is not None:
            listed.entries[entry.name] = entry
        self.generation += 1

    def clear_listings(self) -> None:
        self._listings.clear()
        self.generation += 1
