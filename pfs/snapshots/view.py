"""What a snapshot mount changes in a mount: a read-only SnapshotBackend in place of the live one, and a
long metadata TTL so the kernel keeps every entry and attribute (the namespace never changes).

Used by pfs/mount/daemon.py: load the manifest and serve from it, before mounting (a missing snapshot is the
one-line error `pfs mount` prints).
"""

from __future__ import annotations

from pfs.backends import Backend, redact_uri
from pfs.options import MountOptions
from pfs.snapshots.backend import SnapshotBackend
from pfs.snapshots.store import SnapshotStore

# Kernel entry/attribute timeout of a snapshot mount: nothing in it ever changes, so a day is as good as
# forever, and small enough to stay clear of any overflow in the kernel's jiffies conversion.
SNAPSHOT_TTL = 86400.0


def pin_options(mount: MountOptions) -> None:
    """A snapshot mount is read-only and trusts its metadata for as long as the kernel will."""
    if mount.snapshot:
        mount.read_only = True
        mount.metadata_ttl = SNAPSHOT_TTL


def snapshot_view(live: Backend, name: str, uri: str) -> SnapshotBackend:
    """The read-only view of snapshot `name` of `live` (the manifest is loaded into memory now)."""
    return SnapshotBackend(SnapshotStore(live, redact_uri(uri)).load(name), live)
