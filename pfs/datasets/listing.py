"""Listing a whole tree fast: `list_tree` walks a backend with several listings in flight, minus exclusions.

Object stores list a prefix in pages of about 1,000 keys, one request after another, so one recursive
listing of a big bucket is bound by round trips. `list_tree` first lists the top levels one directory at a
time until there are enough subtrees to keep `threads` listings busy, then walks each subtree in its own
worker thread. On file:// the same plan spreads the directory reads over threads.

Used by `pfs snapshot create` and `pfs sync`. Only the Backend contract is used here: never pyarrow.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pfs.backends import Backend, Entry, Kind

# Levels listed one directory at a time before subtrees are walked whole: deep enough to find parallelism
# in a `dataset/split/class/...` layout, shallow enough that a flat tree costs only a few extra requests.
MAX_SPLIT_DEPTH = 3


@dataclass(frozen=True)
class Excludes:
    """rsync-like globs: a pattern with a '/' matches the whole relative path, one without matches the
    last name at any depth (`*.tmp`, `__pycache__`). An excluded directory excludes everything below it."""

    patterns: tuple[str, ...] = ()

    def excluded(self, path: str) -> bool:
        name = path.rpartition("/")[2]
        for pattern in self.patterns:
            target = path if "/" in pattern.strip("/") else name
            if fnmatch.fnmatchcase(target, pattern.strip("/")):
                return True
        return False


NO_EXCLUDES = Excludes()


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _under_excluded(path: str, excludes: Excludes) -> bool:
    parts = path.split("/")
    return any(excludes.excluded("/".join(parts[: i + 1])) for i in range(len(parts)))


def list_tree(
    backend: Backend,
    threads: int = 16,
    excludes: Excludes = NO_EXCLUDES,
    on_progress: Callable[[int], None] = lambda count: None,
    root: str = "",
) -> list[tuple[str, Entry]]:
    """Every entry below `root` as (path, entry), unsorted; `on_progress(n)` is told of each batch found."""
    found: list[tuple[str, Entry]] = []

    def keep(batch: Iterable[tuple[str, Entry]]) -> list[tuple[str, Entry]]:
        kept = [(path, entry) for path, entry in batch if not excludes.excluded(path)]
        found.extend(kept)
        on_progress(len(kept))
        return kept

    def listed(path: str) -> list[tuple[str, Entry]]:
        return [(_join(path, e.name), e) for e in backend.list_dir(path)]

    def walked(path: str) -> list[tuple[str, Entry]]:
        # An excluded directory inside the subtree excludes what the walk reports below it too.
        entries = backend.walk(path)
        if not excludes.patterns:
            return list(entries)
        return [(p, e) for p, e in entries if not _under_excluded(p, excludes)]

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="pfs-list") as pool:
        frontier = [root]
        for _ in range(MAX_SPLIT_DEPTH):
            subdirs = []
            for batch in pool.map(listed, frontier):
                subdirs += [path for path, entry in keep(batch) if entry.kind is Kind.DIR]
            frontier = subdirs
            if not frontier or len(frontier) >= threads:
                break
        for batch in pool.map(walked, frontier):
            keep(batch)
    return found
