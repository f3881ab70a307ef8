"""`Hints`: files a reader said it will open soon, in order, fetched just ahead of the places being read.

A training job knows its epoch's order before the first sample (a sampler draws the whole permutation), so it
can say which files come next (`pfs.torch.HintedSampler`, `pfs prefetch`, or a getxattr by hand: see
pfs/mount/control.py). On a cold cache that turns an epoch of round trips, one after another per reader, into
fetches in parallel ahead of the readers.

Each poster (one process: a rank) has its own stream; a post that starts over (a new epoch) replaces it.
Readers take a stream in runs (a DataLoader worker reads a whole batch, the next batch goes to whichever
worker is free), so several places in it are read at once: each is followed as a cursor, from the opens
that land just past it (within STEP) or in what it fetched, and the files just after each cursor are
fetched, each cursor getting an equal share of `window` bytes (MIN_SHARE files at least). Before any
read, one cursor stands before the first path. A new cursor starts with the share of one of
FIRST_READERS, doubling every RAMP_OPENS opens: the workers of a DataLoader start together, each on its
own batch, and the first one followed must not take the whole window before the others show up.

Bounds: fetched files not opened yet hold at most `window` bytes (their first blocks) in all; a file a
cursor fetched and its reader passed by NEAR (a quarter of that when the window is full) without
opening it leaves the window (a reader out of step may still open it: its block stays in the memory
tier's LRU) and is dropped (`drop`) once TRAIL behind, or with its list; a stream keeps at
most QUEUED paths past its furthest read (a post answers how many it took: the poster sends the rest
later) and TRAIL behind its nearest one; a stream unused for IDLE_S is let go. A list never read costs
a share of one window.

Counted in the mount's stats: hint_paths (taken), hint_fetches (started ahead), hint_hits (opened after
their fetch started), hint_misses (opened before it), hint_dropped (fetched, never opened), hint_not_found.
Bookkeeping with no I/O of its own: `resolve` (the file's listing entry) and `start` (Versions.prefetch)
are given; `run` is the one task that fetches, on the trio loop.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from pfs.backends import Entry
from pfs.counters import Stats
from pfs.errors import PfsError

log = logging.getLogger(__name__)

MAX_STREAMS = 16  # posters followed at once (ranks of one node, scripts); the oldest is dropped beyond
QUEUED = 32_768  # paths a stream holds past its furthest read
TRAIL = 32_768  # paths a stream keeps behind its nearest read (opens that come late are still counted)
TRIM_BATCH = 4096  # paths forgotten together (a list's front is cut in one go)
CURSORS = 32  # places of one stream read at once (DataLoader workers times batches in flight)
STEP = 8  # an open this far past a cursor continues it (a sample skipped, readers arriving out of step)
NEAR = 64  # a cursor's fetched files this far behind its reader were skipped; opens this far behind it late
IDLE_OPENS = 256  # a cursor no open continued within this many opens of its stream has no reader left
MIN_SHARE = 4  # files each cursor may fetch ahead, whatever its share of the window
FIRST_READERS = 8  # readers a new cursor leaves room for (a DataLoader's workers start at once)
RAMP_OPENS = 16  # a cursor's share doubles with each this many opens, up to its share of the window
OPENED, PASSED = "opened", "passed"  # how a fetched file leaves the window
RETRY_S = 0.05  # the memory budget had no room: look again this soon, even with no open to wake us
IDLE_S = 60.0  # a stream nothing was posted to nor opened from for this long is let go (a job that ended)


@dataclass(eq=False)
class _Cursor:
    last: int  # the furthest index its reader opened
    next: int  # the next index to consider fetching
    touched: int  # the stream's open count when it last moved
    opens: int = 0  # opens that moved it
    share: int = 0  # bytes it may hold fetched ahead, as the last fill found (0: not filled yet)
    ahead: int = 0  # bytes it fetched that are not opened yet
    files: int = 0  # how many files those are
    fetched: deque[int] = field(default_factory=deque)  # indices it fetched, in order


@dataclass(eq=False)
class _Stream:
    base: int = 0  # index of paths[0]
    paths: list[str] = field(default_factory=list)  # a list: fetching indexes into it anywhere
    where: dict[str, int] = field(default_factory=dict)  # index of each kept path not opened yet
    fetched: dict[int, tuple[int, _Cursor]] = field(default_factory=dict)  # index -> (bytes, its cursor)
    passed: set[int] = field(default_factory=set)  # fetched, passed by their reader, not opened yet
    cursors: list[_Cursor] = field(default_factory=list)  # most recently moved last
    opens: int = 0
    used_at: float = field(default_factory=time.monotonic)  # last post or open

    @property
    def end(self) -> int:
        return self.base + len(self.paths)

    def furthest(self) -> int:
        return max((c.last for c in self.cursors), default=self.base - 1)


class Hints:
    def __init__(
        self,
        window: int,
        block_size: int,
        stats: Stats,
        resolve: Callable[[str], Awaitable[Entry | None]],
        start: Callable[[str, Entry], bool],
        drop: Callable[[str], None],
    ) -> None:
        self._window = window  # bytes fetched ahead and not opened, over all streams
        self._block_size = block_size  # what a fetch ahead holds of a file: its first block
        self._stats = stats
        self._resolve = resolve
        self._start = start
        self._drop = drop
        self._streams: OrderedDict[int, _Stream] = OrderedDict()
        self._held = 0
        self._wake = trio.Event()

    @property
    def posted(self) -> bool:
        """Whether any poster has paths here (opens need not be looked up otherwise)."""
        return bool(self._streams)

    def queued(self, poster: int) -> int:
        """How many paths `poster`'s list holds."""
        stream = self._streams.get(poster)
        return len(stream.paths) if stream is not None else 0

    @property
    def held(self) -> int:
        """Bytes fetched ahead that are not opened yet."""
        return self._held

    # ---- posts -----------------------------------------------------------------------------------------

    def post(self, poster: int, paths: list[str], restart: bool) -> int:
        """`poster` will open `paths` next, in this order, after what it posted before unless `restart`.
        Returns how many were taken: the rest does not fit until reads move on."""
        stream = self._streams.pop(poster, None)
        if restart or stream is None:
            if stream is not None:
                self._forget(stream)
            stream = _Stream()
            stream.cursors.append(_Cursor(-1, 0, 0))
        self._streams[poster] = stream
        stream.used_at = time.monotonic()
        while len(self._streams) > MAX_STREAMS:
            self._forget(self._streams.pop(next(iter(self._streams))))
        room = max(0, stream.furthest() + QUEUED - stream.end + 1)
        taken = paths[:room]
        for path in taken:
            if path not in stream.where:  # a post seen twice (a size probe before the call) adds nothing
                stream.where[path] = stream.end
                stream.paths.append(path)
        self._stats.add("hint_paths", len(taken))
        if not stream.paths:
            del self._streams[poster]  # an empty restart: the poster is done
        self._wake.set()
        return len(taken)

    def _forget(self, stream: _Stream) -> None:
        for index in list(stream.fetched):
            self._let_go(stream, index, PASSED)
        for index in stream.passed:
            self._dropped(stream, index)
        stream.passed.clear()

    # ---- opens -----------------------------------------------------------------------------------------

    def opened(self, path: str) -> bool:
        """`path` is being opened (or, in the kernel's no-open mode, read from its start); whether it was
        hinted (then nothing else need guess what comes after it)."""
        if not self._streams:
            return False
        for stream in self._streams.values():
            index = stream.where.pop(path, None)
            if index is not None:
                self._opened(stream, index)
                return True
        return False

    def _opened(self, stream: _Stream, index: int) -> None:
        stream.opens += 1
        stream.used_at = time.monotonic()
        if index in stream.fetched:
            self._stats.add("hint_hits", 1)
            self._let_go(stream, index, OPENED)
        elif index in stream.passed:  # a late reader: what was fetched for it is still there
            self._stats.add("hint_hits", 1)
            stream.passed.discard(index)
        else:
            self._stats.add("hint_misses", 1)
        cursor = self._cursor_of(stream, index)
        if cursor is not None:
            cursor.last = max(cursor.last, index)
            cursor.next = max(cursor.next, index + 1)
            cursor.touched = stream.opens
            cursor.opens += 1
            stream.cursors.remove(cursor)
            stream.cursors.append(cursor)
            self._pass(stream, cursor)
        self._retire_idle(stream)
        self._trim(stream)
        # Refilled half a share at a time: a wake-up per open costs a hot epoch's loop a tenth of its pace.
        if cursor is None or cursor.ahead * 2 <= cursor.share or cursor.files < MIN_SHARE:
            self._wake.set()

    def _cursor_of(self, stream: _Stream, index: int) -> _Cursor | None:
        """The cursor an open at `index` continues, a new one, or None for a late open just behind one."""
        best = None
        for cursor in stream.cursors:  # the nearest one behind it, that it steps on from or fetched for
            if cursor.last < index <= max(cursor.last + STEP, cursor.next - 1) and (
                best is None or cursor.last > best.last
            ):
                best = cursor
        if best is not None:
            return best
        if any(c.last - NEAR <= index <= c.last for c in stream.cursors):
            return None  # readers sharing a run arrive out of step: the slower ones follow it already
        cursor = _Cursor(index, index + 1, stream.opens)
        stream.cursors.append(cursor)
        if len(stream.cursors) > CURSORS:
            self._retire(stream, stream.cursors[0])
        return cursor

    def _pass(self, stream: _Stream, cursor: _Cursor) -> None:
        """What `cursor` fetched and its reader passed by more than NEAR without opening it no longer holds
        the window (a reader out of step may still open it)."""
        behind = NEAR if self._held < self._window else NEAR // 4  # a full window needs the room sooner
        while cursor.fetched and cursor.fetched[0] < cursor.last - behind:
            index = cursor.fetched.popleft()
            if stream.fetched.get(index, (0, None))[1] is cursor:
                self._let_go(stream, index, PASSED)

    def _retire_idle(self, stream: _Stream) -> None:
        for cursor in [c for c in stream.cursors if stream.opens - c.touched > IDLE_OPENS]:
            self._retire(stream, cursor)

    def _retire(self, stream: _Stream, cursor: _Cursor) -> None:
        stream.cursors.remove(cursor)
        for index in cursor.fetched:
            if stream.fetched.get(index, (0, None))[1] is cursor:
                self._let_go(stream, index, PASSED)

    def _let_go(self, stream: _Stream, index: int, how: str) -> None:
        """A fetched file leaves the window: OPENED, or PASSED (kept for a late open until trimmed)."""
        nbytes, cursor = stream.fetched.pop(index)
        cursor.ahead -= nbytes
        cursor.files -= 1
        self._held -= nbytes
        if how is PASSED:
            stream.passed.add(index)

    def _dropped(self, stream: _Stream, index: int) -> None:
        """A fetched file that was never opened: its block goes."""
        self._stats.add("hint_dropped", 1)
        if stream.base <= index < stream.end:
            self._drop(stream.paths[index - stream.base])

    def _trim(self, stream: _Stream) -> None:
        """Forget the paths more than TRAIL behind the nearest cursor, TRIM_BATCH at a time."""
        nearest = min((c.last for c in stream.cursors), default=stream.end)
        cut = min(len(stream.paths), nearest - TRAIL - stream.base)
        if cut < TRIM_BATCH and not (cut > 0 and cut == len(stream.paths)):
            return
        for offset, path in enumerate(stream.paths[:cut]):
            index = stream.base + offset
            if stream.where.get(path) == index:
                del stream.where[path]
            if index in stream.fetched:
                self._let_go(stream, index, PASSED)
            if index in stream.passed:
                stream.passed.discard(index)
                self._dropped(stream, index)
        del stream.paths[:cut]
        stream.base += cut

    # ---- fetching --------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Fetch ahead of every cursor, whenever a post or an open moved something; runs until cancelled."""
        while True:
            self._let_go_idle()
            blocked = await self._fill()
            with trio.move_on_after(RETRY_S if blocked else IDLE_S / 4):
                await self._wake.wait()
            self._wake = trio.Event()

    def _let_go_idle(self) -> None:
        now = time.monotonic()
        for poster, stream in list(self._streams.items()):
            if now - stream.used_at > IDLE_S:
                self._forget(self._streams.pop(poster))

    async def _fill(self) -> bool:
        """Start what fits; True when the memory budget stopped it (then it is tried again soon)."""
        for poster, stream in list(self._streams.items()):
            even = self._window // len(stream.cursors)
            for cursor in list(stream.cursors):
                first = self._window // FIRST_READERS
                share = min(even, first << min(FIRST_READERS.bit_length(), cursor.opens // RAMP_OPENS))
                cursor.share = share
                while (
                    (cursor.ahead < share or cursor.files < MIN_SHARE)
                    and self._held < self._window
                    and cursor.next < stream.end
                ):
                    index = cursor.next
                    cursor.next += 1
                    path = stream.paths[index - stream.base] if index >= stream.base else None
                    if path is None or stream.where.get(path) != index or index in stream.fetched:
                        continue  # opened already, or fetched by another cursor
                    try:
                        entry = await self._resolve(path)
                    except PfsError as exc:  # the backend failed: the open will ask, and report
                        log.debug("looking up hinted %s failed: %s", path, exc)
                        entry = None
                    if self._streams.get(poster) is not stream or stream.where.get(path) != index:
                        break  # replaced or opened meanwhile: look again from the top
                    if entry is None:
                        self._stats.add("hint_not_found", 1)
                        del stream.where[path]
                        continue
                    if not self._start(path, entry):
                        cursor.next = index
                        return True
                    nbytes = min(entry.size, self._block_size)
                    stream.fetched[index] = (nbytes, cursor)
                    cursor.fetched.append(index)
                    cursor.ahead += nbytes
                    cursor.files += 1
                    self._held += nbytes
                    self._stats.add("hint_fetches", 1)
        return False
