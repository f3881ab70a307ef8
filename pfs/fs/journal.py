"""The write-back journal: files whose close was acknowledged before their upload, durable in staging.

In write-back mode (`-o writeback`) a close returns once the file's bytes are on the local disk. Each such
file has an entry in `<staging_dir>/journal/`: `<id>.data`, a hard link to (or, where the staging file
system cannot link an unnamed file, a copy of) the staged bytes, labelled with an extended attribute that
names the backend and the path (so one fsync makes bytes and record durable; the staging file system must
support user extended attributes). File and directory are fsync'd before the close returns; the entry is
removed once the upload completed, or when the bytes were dropped (discarded, unlinked, a permanent
failure). An entry without its label (a copy cut short) was never acknowledged and is never replayed.

A daemon killed with uploads pending leaves its entries behind. The next read-write mount of the same
backend with the same staging directory replays them (uploads each whole, then removes it) before it
serves anything, so no later write through that mount can be overwritten by an older replayed one.

Ids carry the owner tag of pfs/backends/leftovers.py: only entries whose process provably no longer runs
are replayed, so two live mounts sharing a staging directory never take each other's entries. This module
never removes an entry that was not uploaded, except on its owner's word (`remove`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from dataclasses import dataclass

from pfs.backends import Backend, leftovers
from pfs.errors import PfsError

log = logging.getLogger(__name__)

LABEL = "user.pfs.journal"  # the extended attribute of an entry: {"backend": id, "path": path}


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """The entries of one mount. All methods block (local disk): call them from worker threads."""

    def __init__(self, staging_dir: str, backend_id: str) -> None:
        self.dir = os.path.join(staging_dir, "journal")
        self._backend_id = backend_id
        os.makedirs(self.dir, mode=0o700, exist_ok=True)

    def new_id(self) -> str:
        return f"{leftovers.owner_tag()}{uuid.uuid4().hex}"

    def data_path(self, entry: str) -> str:
        return os.path.join(self.dir, entry + ".data")

    def label(self, path: str) -> tuple[str, bytes]:
        """The extended attribute that names an entry's backend and destination path."""
        return LABEL, json.dumps({"backend": self._backend_id, "path": path}).encode()

    def sync(self) -> None:
        """Make the names of new entries durable."""
        _fsync_dir(self.dir)

    def remove(self, entry: str) -> None:
        """Forget `entry`: its bytes were uploaded or dropped."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.data_path(entry))


@dataclass
class Replayed:
    files: int = 0
    bytes: int = 0
    failed: int = 0


def replay(staging_dir: str, backend: Backend) -> Replayed:
    """Upload what dead mounts of `backend` acknowledged but had not uploaded (blocks). An entry whose
    upload fails stays for the next mount; one without its data (never acknowledged) is removed."""
    done = Replayed()
    folder = os.path.join(staging_dir, "journal")
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return done
    for name in names:
        if not name.endswith(".data") or not leftovers.owner_is_gone(name):
            continue
        data = os.path.join(folder, name)
        try:
            meta = json.loads(os.getxattr(data, LABEL))
        except OSError:  # no label: a copy the close did not finish, never acknowledged
            with contextlib.suppress(FileNotFoundError):
                os.unlink(data)
            continue
        except ValueError as exc:
            log.warning("write-back journal entry %s unreadable, kept: %s", name, exc)
            continue
        if meta.get("backend") != backend.id:
            continue  # another backend's: its next mount replays it
        path = meta["path"]
        try:
            with open(data, "rb") as source:
                size = os.fstat(source.fileno()).st_size
                backend.write_file(path, source, size)
        except (OSError, PfsError) as exc:
            done.failed += 1
            log.warning("write-back of %s (of a dead mount) failed, kept for the next mount: %s", path, exc)
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(data)
        done.files += 1
        done.bytes += size
        log.info("uploaded %s (%d bytes), acknowledged by a mount that died before uploading it", path, size)
    return done
