"""`--partition I/N`: which files are one worker's share, the same way on every node and every run."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from pfs.errors import UsageError


@dataclass(frozen=True)
class Share:
    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> Share:
        if text is None:
            return cls()
        index, _, count = text.partition("/")
        try:
            share = cls(int(index), int(count))
        except ValueError:
            raise UsageError(f"--partition takes I/N, e.g. 0/8, not {text!r}") from None
        if not 0 <= share.index < share.count:
            raise UsageError(f"--partition {text}: I must be between 0 and N-1")
        return share

    def has(self, path: str) -> bool:
        """Whether `path` (relative, as every worker names it) belongs to this share."""
        return self.count == 1 or zlib.crc32(path.encode()) % self.count == self.index
