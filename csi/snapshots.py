"""Kubernetes VolumeSnapshots as pfs snapshots: snapshot ids, the index of a base's snapshots, and restores.

A CSI snapshot of a provisioned volume is a pfs snapshot of the volume's tree: the manifest that
`pfs snapshot create <volume uri> NAME` writes (`<base>/<volume>/.pfs/snapshots/NAME.parquet`), so
`pfs snapshot list|show|diff` and `pfs mount --snapshot` see it as well. Its id `NAME@<volume id>` says where
it is. An index record `<base>/.csi-snapshots/NAME.json` (CSI name, id, source volume, bytes, creation time)
keeps names unique under a base (the same name for another volume is ALREADY_EXISTS) and lets ListSnapshots
answer from one listing instead of opening every manifest.

A pfs snapshot records versions of the volume's objects, not copies of them: the source volume's data must
outlive its snapshots (DeleteVolume refuses while it has any), and an object changed since the snapshot
fails loudly wherever the snapshot is read.

Restoring (CreateVolume from a snapshot):
- read-only access modes: a *view*, nothing copied and nothing listed: the manifest is stored again under
  the source volume as `volume+<new volume>` (pinned, so deleting the VolumeSnapshot leaves the volume
  working), and the volume mounts that snapshot of the source volume's URI.
- writable access modes: a new directory filled from the manifest (never a listing) by server-side copies;
  each file is checked against its recorded version before and after its copy, and the first changed or
  vanished object fails the whole restore, whose partial tree is removed (the volume only exists once its
  record is written, after the last copy).

Everything here goes through `pfs.backends` and `pfs.snapshots`' public functions; nothing reads pfs
internals. Errors for the caller are `Refused` (a gRPC code and a message without secrets).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from csi import csi_pb2, records, volume
from pfs.backends import Backend, Kind, redact_uri
from pfs.errors import AlreadyExists, BackendError, NotFound, Stale, UsageError
from pfs.snapshots.backend import SnapshotBackend
from pfs.snapshots.store import SnapshotStore

log = logging.getLogger(__name__)

INDEX = ".csi-snapshots"
VIEW_PREFIX = "volume+"  # never produced by volume.directory_name, so a view never takes a snapshot's name
COPY_THREADS = 16


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SnapshotRef:
    """A CSI snapshot: pfs snapshot `name` of provisioned volume `source`."""

    name: str
    source: volume.DynamicVolume

    @property
    def snapshot_id(self) -> str:
        return f"{self.name}@{self.source.volume_id}"


def parse_snapshot_id(snapshot_id: str) -> SnapshotRef | None:
    """The snapshot an id names, or None for an id this plugin did not make."""
    name, at, rest = snapshot_id.partition("@")
    source = volume.parse_volume_id(rest)
    if not at or not volume.valid_name(name) or source is None:
        return None
    return SnapshotRef(name, source)


def view_name(volume_name: str) -> str:
    return f"{VIEW_PREFIX}{volume_name}"


def store_of(tree: Backend, uri: str) -> SnapshotStore:
    return SnapshotStore(tree, redact_uri(uri))


# ---- the index ---------------------------------------------------------------------------------------


def _index_path(name: str) -> str:
    return f"{INDEX}/{name}.json"


def read_index(base: Backend, name: str) -> dict | None:
    return records.read(base, _index_path(name))


def list_index(base: Backend) -> Iterator[dict]:
    try:
        entries = base.list_dir(INDEX)
    except NotFound:
        return
    for entry in entries:
        if entry.kind is Kind.FILE and entry.name.endswith(".json"):
            record = read_index(base, entry.name.removesuffix(".json"))
            if record is not None:  # deleted meanwhile
                yield record


def to_csi(record: dict) -> csi_pb2.Snapshot:
    created = Timestamp()
    created.FromNanoseconds(record["created_ns"])
    return csi_pb2.Snapshot(
        size_bytes=record["size"],
        snapshot_id=record["id"],
        source_volume_id=record["source"],
        creation_time=created,
        ready_to_use=True,  # written before CreateSnapshot answers
    )


# ---- create, delete ----------------------------------------------------------------------------------


def create(base: Backend, tree: Backend, ref: SnapshotRef, csi_name: str) -> dict:
    """Snapshot volume `ref.source` (whose tree is `tree`) as `ref.name`; the same call again returns the
    same snapshot, and one interrupted after writing the manifest adopts it."""
    existing = read_index(base, ref.name)
    if existing is not None and existing["source"] != ref.source.volume_id:
        raise Refused(
            grpc.StatusCode.ALREADY_EXISTS, f"snapshot {csi_name} already exists for another volume"
        )
    store = store_of(tree, ref.source.uri)
    if existing is not None and store.exists(ref.name):
        return existing
    if store.exists(ref.name):
        info = store.info(ref.name)
        created_ns = int(datetime.datetime.fromisoformat(info.created).timestamp() * 1e9)
    else:
        info = store.create(ref.name)
        created_ns = int(datetime.datetime.now(datetime.UTC).timestamp() * 1e9)
        log.info("snapshot %s of %s: %d files, %d bytes", ref.name, ref.source.name, info.files, info.bytes)
    record = {
        "name": csi_name, "id": ref.snapshot_id, "source": ref.source.volume_id, "size": info.bytes,
        "created_ns": created_ns,
    }  # fmt: skip
    records.write(base, _index_path(ref.name), record)
    return record


def delete(base: Backend, tree: Backend, ref: SnapshotRef) -> None:
    """Remove the manifest, then the index record; either may be gone already."""
    with suppress(UsageError):
        store_of(tree, ref.source.uri).delete(ref.name)
    with suppress(NotFound):
        base.remove_file(_index_path(ref.name))


def find(base: Backend, tree: Backend, ref: SnapshotRef) -> dict:
    """The index record of an existing snapshot, else NOT_FOUND."""
    record = read_index(base, ref.name)
    stored = record is not None and record["id"] == ref.snapshot_id
    if not stored or not store_of(tree, ref.source.uri).exists(ref.name):
        raise Refused(grpc.StatusCode.NOT_FOUND, f"snapshot {ref.snapshot_id} does not exist")
    return record  # type: ignore[return-value]


# ---- restore -----------------------------------------------------------------------------------------


def make_view(tree: Backend, ref: SnapshotRef, volume_name: str) -> None:
    """Pin the snapshot for a read-only volume: its manifest again, under the view's own name."""
    store = store_of(tree, ref.source.uri)
    if not store.exists(view_name(volume_name)):
        store.copy(ref.name, view_name(volume_name))


def drop_view(tree: Backend, source_uri: str, volume_name: str) -> None:
    with suppress(UsageError):
        store_of(tree, source_uri).delete(view_name(volume_name))


def copy_tree(base: Backend, tree: Backend, ref: SnapshotRef, dest: str) -> None:
    """Fill directory `dest` of `base` with the snapshot's tree by server-side copies, each file checked
    against its recorded version before and after it is copied. On any failure the partial tree is left
    for the caller to remove."""
    view = SnapshotBackend(store_of(tree, ref.source.uri).load(ref.name), tree)
    entries = list(view.walk(""))  # from the manifest, parents before children
    with suppress(AlreadyExists):
        base.make_dir(dest)
    for path, entry in entries:
        if entry.kind is Kind.DIR:
            with suppress(AlreadyExists):
                base.make_dir(f"{dest}/{path}")
        elif entry.kind is Kind.SYMLINK:
            base.write_symlink(f"{dest}/{path}", view.read_symlink(path))

    def copy(item: tuple[str, int]) -> None:
        path, size = item
        view.open_reader(path, size).close()  # still the recorded version (else Stale / BackendError)
        base.copy_file(f"{ref.source.name}/{path}", f"{dest}/{path}")
        view.open_reader(path, size).close()  # and not replaced while it was being copied

    files = [(path, entry.size) for path, entry in entries if entry.kind is Kind.FILE]
    with ThreadPoolExecutor(max_workers=COPY_THREADS, thread_name_prefix="csi-restore") as pool:
        for _ in pool.map(copy, files):  # the first failure ends the restore
            pass


RESTORE_FAILURES = (Stale, BackendError, NotFound)  # the snapshot no longer matches the store
