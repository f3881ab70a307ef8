"""PyTorch: a sampler that tells the pfs mount which files each epoch reads, in order, as the epoch starts.

    from pfs.torch import HintedSampler

    sampler = HintedSampler(RandomSampler(dataset), lambda i: dataset.paths[i])
    loader = DataLoader(dataset, sampler=sampler, batch_size=64, num_workers=8)

A sampler draws the whole epoch's order before the first sample is loaded; `HintedSampler` posts the
paths of that order to the mount (pfs/mount/control.py `post_hints`), a few thousand ahead of the indices it
has handed out, so the mount fetches the next files in parallel just ahead of the DataLoader's workers
(pfs/fs/hints.py). Wrap a DistributedSampler the same way: each rank posts only its own share, and
`set_epoch` is passed on. Paths outside a pfs mount are read as usual: the sampler then only yields.

Needs torch (`pip install 'pfs[torch]'`); the mount never does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sized
from typing import Any

from torch.utils.data import Sampler

from pfs.mount import control

log = logging.getLogger(__name__)

LEAD = 4096  # paths posted ahead of the indices handed out: more than a DataLoader holds in flight
POST_EVERY = 512  # indices handed out between two posts


class HintedSampler(Sampler[int]):
    """`sampler`'s indices, unchanged; `path_of(index)` names the file the dataset reads for that index."""

    def __init__(self, sampler: Any, path_of: Callable[[int], str], lead: int = LEAD) -> None:
        self.sampler = sampler
        self.path_of = path_of
        self.lead = lead
        self._root: str | None = None  # the pfs mount's root, found at the first post
        self._off = False  # the paths are not in a pfs mount: only yield

    def __len__(self) -> int:
        assert isinstance(self.sampler, Sized)
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        order = list(self.sampler)  # this epoch's order, drawn now as the wrapped sampler draws it
        posted = self._post(order, 0, restart=True)
        for handed, index in enumerate(order):
            if posted < len(order) and handed % POST_EVERY == 0:
                posted = self._post(order, posted, restart=False, upto=handed + self.lead)
            yield index

    def _post(self, order: list[int], start: int, restart: bool, upto: int | None = None) -> int:
        """Post the paths of `order[start:upto]` (the first `lead` when `upto` is None); returns how far
        the mount took them."""
        stop = min(len(order), upto if upto is not None else self.lead)
        if self._off or start >= stop:
            return start
        paths = [os.path.abspath(self.path_of(i)) for i in order[start:stop]]
        if self._root is None:
            self._root = _mount_root(paths[0])
        prefix = self._root.rstrip("/") + "/"
        relative = [p[len(prefix) :] if p.startswith(prefix) else "" for p in paths]  # '' is never posted
        try:
            return start + control.post_hints(self._root, relative, restart)
        except OSError as exc:
            self._off = True
            log.info("not hinting %s: not a pfs mount (%s)", self._root, exc.strerror)
            return start


def _mount_root(path: str) -> str:
    directory = os.path.dirname(path)
    while not os.path.ismount(directory) and directory != os.path.dirname(directory):
        directory = os.path.dirname(directory)
    return directory
