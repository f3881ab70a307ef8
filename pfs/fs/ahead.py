"""`ReadAhead`: which files of a directory to make ready before they are opened, when it is read in order.

A training epoch or a copy opens a directory's files one after another in name order; each cold open then
waits a whole round trip to the store. When an open follows one of a directory's recent opens in name
order (the next file, or close to it), the next `window` files are handed to `start` (which makes their
version and first block ready inside the memory budget, see `Versions.prefetch`), never more than `window`
files, nor more than `window_bytes` of their first blocks, ahead of the reader, and again half a window
at a time once half of them are read (files started together are looked up together: in one worker call
to the disk tier, so a wide window costs less per file than a narrow one: with 32 files of 128 KiB
instead of 8, cold reads went 1.1x (one reader) to 1.15x (eight) as fast, with 7-16 % less daemon CPU
per file). A reader is followed once it has opened FOLLOW_AFTER files in a row in order, its window
growing by RAMP files with each further one: readers that jump around (a shuffled sampler) start
nothing, although one of their opens now and then lands just after another's (with 8 shuffled readers
and windows started at the first such coincidence, more than half of the files made ready were never
opened). Such chance order still comes often in big directories, and a reader followed by chance keeps
being continued by opens that land in what was made ready for it (one shuffled reader of 20 directories
of 500 files made 2,625 files ready for 10,000 opens; 274 of them were opened): once more of the files
made ready lately were dropped unopened than were opened (`pays`), only a reader that opened PROVEN files
in a row, each at most NEAR past the last, starts files. Several readers of one directory are followed
apart (up to STREAMS each). Readers that split a directory between them (eight threads taking every
eighth file) open its files nearly in order but out of step, some a few files ahead, some behind: an open
anywhere in what a followed reader made ready continues it, and one just behind it starts nothing
(followed apart, such readers kept breaking into new streams that never ramped up: 8 readers had 17 % of
the files made ready in a warm pass, 911 files/s, against 97 % and 1,132 files/s now). `start` answers
False when the budget has no room: the rest waits for the next open.

Pure bookkeeping over the directory's listing (names in the order a sorted walk reads them): no I/O and no
awaits, so it runs on the trio loop between two checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable

from pfs.backends import Entry, Kind
from pfs.fs.names import Listing

WINDOW = 32  # files made ready ahead of one reader
WINDOW_BYTES = 8 << 20  # first blocks made ready ahead of one reader: big files are read long enough each
STREAMS = 16  # readers followed per directory
MAX_DIRECTORIES = 64  # directories whose file order is kept
NEAR = 2  # an open this many names past a reader's last one still follows it (a file skipped)
FOLLOW_AFTER = 2  # opens in a row in order before a reader's next files are made ready
RAMP = 8  # files its window grows by with each open in order, up to `window`
PROVEN = 8  # opens in a row, each at most NEAR past the last, that start files while they do not pay


class _Order:
    """A listing's file names in name order, and where each is."""

    def __init__(self, listing: Listing) -> None:
        self.listing = listing
        self.names = sorted(n for n, e in listing.entries.items() if e.kind is Kind.FILE)
        self.index = {name: i for i, name in enumerate(self.names)}
        # [last opened, made ready up to (exclusive), opens in a row in order, of them at most NEAR apart
        # lately], newest last
        self.streams: list[list[int]] = []


class ReadAhead:
    def __init__(
        self,
        start: Callable[[str, Entry], bool],
        block_size: int,
        window: int = WINDOW,
        window_bytes: int = WINDOW_BYTES,
        pays: Callable[[], bool] = lambda: True,
    ) -> None:
        self._start = start
        self._pays = pays  # whether the files started lately were opened (see PROVEN)
        self._block_size = block_size  # what `start` fetches of a file at most: its first block
        self._window = window
        self._window_bytes = window_bytes
        self._orders: dict[str, _Order] = {}

    def opened(self, path: str, listing: Listing) -> None:
        """The file `path`, named in `listing` (its directory's), is being opened."""
        directory, _, name = path.rpartition("/")
        order = self._order(directory, listing)
        i = order.index.get(name)
        if i is None:
            return
        stream = next((s for s in order.streams if _continues(s, i)), None)
        if stream is None and any(0 <= s[0] - i < self._window for s in order.streams):
            return  # behind a reader, within its window: one of several readers sharing it, late
        if stream is None:  # a new reader, or a jump: follow it from here, start nothing yet
            order.streams.append([i, i + 1, 0, 0])
            del order.streams[:-STREAMS]
            return
        stream[3] = stream[3] + 1 if 0 < i - stream[0] <= NEAR else 0
        stream[0] = i
        stream[2] += 1
        order.streams.remove(stream)
        order.streams.append(stream)
        if stream[2] < FOLLOW_AFTER:
            return
        if stream[3] < PROVEN and not self._pays():
            return  # files started lately went unopened: chance order, as shuffled readers make it
        window = min(self._window, RAMP * (stream[2] - FOLLOW_AFTER + 1))
        if stream[1] - (i + 1) > window // 2:
            return  # enough ready ahead: the next ones are started together, once half of these are read
        stop = min(i + 1 + window, len(order.names))
        j = max(stream[1], i + 1)
        held = sum(self._first_block(listing.entries[n]) for n in order.names[i + 1 : j])
        prefix = f"{directory}/" if directory else ""
        while j < stop and (held < self._window_bytes or j == i + 1):
            name = order.names[j]
            if not self._start(prefix + name, listing.entries[name]):
                break
            held += self._first_block(listing.entries[name])
            j += 1
        stream[1] = j

    def _first_block(self, entry: Entry) -> int:
        return min(entry.size, self._block_size)

    def _order(self, directory: str, listing: Listing) -> _Order:
        order = self._orders.get(directory)
        if order is None or order.listing is not listing:  # a new listing: its names may differ
            if len(self._orders) >= MAX_DIRECTORIES:
                self._orders.pop(next(iter(self._orders)))
            order = self._orders[directory] = _Order(listing)
        return order


def _continues(stream: list[int], i: int) -> bool:
    """Whether opening file `i` continues `stream`: one of its next files, or, once it is followed, any file
    it made ready (readers sharing a directory open its files nearly in order, the faster a few ahead)."""
    last, ready, in_order, _ = stream
    return 0 < i - last <= NEAR or (in_order >= FOLLOW_AFTER and last < i < ready)
