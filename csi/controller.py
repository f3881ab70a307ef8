"""The CSI controller service: pfs volumes as directories under a base URI, and their snapshots.

A StorageClass names a base URI (`uri` parameter); each volume is the directory `<base>/<name>` with `name`
made from the CreateVolume name, and its id `<name>@<base URI>` is enough to find it again (it holds no
secret: credentials come from the provisioner secret on every call). What a CreateVolume asked for is
kept next to the volume, in `<base>/.<name>.csi.json`, so a repeated call is recognised (same
answer) and a conflicting one refused (ALREADY_EXISTS) by any controller replica. Snapshots and restores
are csi/snapshots.py's. Backends are used only through the public `pfs.backends` library.

ListSnapshots without a snapshot or volume filter lists the bases this controller has served since it
started (a request names no base); Kubernetes itself only lists by snapshot id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import grpc

from csi import csi_pb2, csi_pb2_grpc, records, snapshots, volume
from csi.locks import OperationLocks
from csi.requests import require, require_capabilities
from pfs.backends import Backend, BackendOptions, Kind, open_backend, redact_uri
from pfs.errors import AlreadyExists, NotFound, PermissionDenied, PfsError, UsageError

log = logging.getLogger(__name__)

ControllerRPC = csi_pb2.ControllerServiceCapability.RPC


@contextmanager
def _backend(
    context: grpc.ServicerContext, uri: str, secrets: dict[str, str], verify: bool = True
) -> Iterator[Backend]:
    try:
        options = volume.backend_options(secrets)
    except volume.VolumeError as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    try:
        backend = open_backend(uri, options, verify=verify)
    except UsageError as exc:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    try:
        yield backend
    except snapshots.Refused as exc:
        context.abort(exc.code, str(exc))
    except PfsError as exc:  # typed backend errors carry no secrets
        context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
    finally:
        backend.close()


def _record_path(name: str) -> str:
    return f".{name}.csi.json"


def _read_record(backend: Backend, name: str) -> dict | None:
    return records.read(backend, _record_path(name))


def _write_record(backend: Backend, name: str, record: dict) -> None:
    records.write(backend, _record_path(name), record)


def _remove_tree(backend: Backend, path: str) -> None:
    try:
        entries = list(backend.walk(path))
    except NotFound:
        return
    directories = [p for p, entry in entries if entry.kind is Kind.DIR]
    for rel, entry in entries:
        if entry.kind is not Kind.DIR:
            backend.remove_file(rel)
    for rel in sorted(directories, key=lambda p: p.count("/"), reverse=True):
        with suppress(NotFound):
            backend.remove_dir(rel)
    with suppress(NotFound):
        backend.remove_dir(path)


def _capacity(context: grpc.ServicerContext, capacity: csi_pb2.CapacityRange) -> int:
    required, limit = capacity.required_bytes, capacity.limit_bytes
    if required < 0 or limit < 0:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "capacity_range must not be negative")
    if limit and required > limit:
        context.abort(grpc.StatusCode.OUT_OF_RANGE, "capacity_range: required_bytes exceeds limit_bytes")
    # An object store or shared directory has no fixed size: report what was asked for.
    return required or limit


def _same_request(existing: dict, record: dict) -> bool:
    """A repeated CreateVolume asks for what the stored record says (which may hold more, e.g. a size)."""
    return all(existing.get(key) == value for key, value in record.items())


def _volume_of(created: volume.DynamicVolume, record: dict) -> csi_pb2.Volume:
    """The CSI description of a provisioned volume, from its record."""
    parameters = record.get("parameters", {})
    context = {k: v for k, v in parameters.items() if k not in (volume.URI, volume.RETAIN)}
    context[volume.URI] = created.uri
    source = snapshots.parse_snapshot_id(record.get("source", ""))
    if "view" in record and source is not None:
        context[volume.URI], context[volume.SNAPSHOT] = source.source.uri, record["view"]
    described = csi_pb2.Volume(
        volume_id=created.volume_id,
        capacity_bytes=max(record.get("capacity", 0), record.get("size", 0)),
        volume_context=context,
    )
    if source is not None:
        described.content_source.snapshot.snapshot_id = source.snapshot_id
    return described


def _condition(backend: Backend, target: volume.DynamicVolume, record: dict) -> csi_pb2.VolumeCondition:
    """Whether a volume's data is where its record says (a view: its pinned snapshot; else its directory)."""
    source = snapshots.parse_snapshot_id(record.get("source", ""))
    if "view" in record and source is not None:
        tree = open_backend(source.source.uri, BackendOptions(), verify=False)
        try:
            if not snapshots.store_of(tree, source.source.uri).exists(record["view"]):
                message = f"the snapshot this read-only volume shows ({record['view']}) is gone"
                return csi_pb2.VolumeCondition(abnormal=True, message=message)
        finally:
            tree.close()
    else:
        try:
            backend.stat(target.name)
        except NotFound:
            message = f"the volume's directory {target.name} is gone from {redact_uri(target.base_uri)}"
            return csi_pb2.VolumeCondition(abnormal=True, message=message)
    return csi_pb2.VolumeCondition(abnormal=False, message="the volume's data is in place")


def _page(context: grpc.ServicerContext, items: list, max_entries: int, token: str) -> tuple[list, str]:
    """One page of `items` and the token of the next (an offset; '' after the last page)."""
    if max_entries < 0:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "max_entries must not be negative")
    start = 0
    if token:
        if not token.isdigit() or int(token) > len(items):
            context.abort(grpc.StatusCode.ABORTED, f"starting_token {token!r} is not one this plugin gave")
        start = int(token)
    end = start + max_entries if max_entries else len(items)
    return items[start:end], str(end) if end < len(items) else ""


class ControllerService(csi_pb2_grpc.ControllerServicer):
    def __init__(self, locks: OperationLocks) -> None:
        self.locks = locks
        self.bases: set[str] = set()  # base URIs served since start: what an unfiltered ListSnapshots lists

    def CreateVolume(self, request, context):
        require(context, name=request.name)
        require_capabilities(context, request.volume_capabilities)
        source = self._snapshot_source(context, request)
        parameters = dict(request.parameters)
        base = parameters.get(volume.URI, "")
        if not base:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the StorageClass needs a 'uri' parameter (base URI)"
            )
        if redact_uri(base) != base:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the 'uri' parameter holds credentials; use the provisioner secret",
            )
        capacity = _capacity(context, request.capacity_range)
        created = volume.DynamicVolume(volume.directory_name(request.name), base)
        record = {"name": request.name, "parameters": parameters, "capacity": capacity}
        if source is not None:
            if source.source.base_uri != base:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "a snapshot is restored under its volume's base URI: use a StorageClass with that uri",
                )
            record["source"] = source.snapshot_id
            if all(map(volume.is_read_only, request.volume_capabilities)):
                record["view"] = snapshots.view_name(created.name)
        self.bases.add(base)
        secrets = dict(request.secrets)
        with self.locks.hold(created.volume_id, context), _backend(context, base, secrets) as backend:
            existing = _read_record(backend, created.name)
            if existing is not None and not _same_request(existing, record):
                context.abort(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"volume {request.name} already exists with other parameters, capacity or source",
                )
            if existing is None:
                if source is not None:
                    record["size"] = self._restore(context, backend, source, created, record, secrets)
                else:
                    with suppress(AlreadyExists):  # a directory left by an interrupted call is adopted
                        backend.make_dir(created.name)
                _write_record(backend, created.name, record)
                log.info("created volume %s at %s", created.name, redact_uri(created.uri))
            else:
                record = existing
        return csi_pb2.CreateVolumeResponse(volume=_volume_of(created, record))

    @staticmethod
    def _snapshot_source(context, request) -> snapshots.SnapshotRef | None:
        if not request.HasField("volume_content_source"):
            return None
        if not request.volume_content_source.HasField("snapshot"):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "volumes cannot be cloned; take a VolumeSnapshot and restore that",
            )
        snapshot_id = request.volume_content_source.snapshot.snapshot_id
        source = snapshots.parse_snapshot_id(snapshot_id)
        if source is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"snapshot {snapshot_id} does not exist")
        return source

    @staticmethod
    def _restore(context, backend, source, created, record, secrets) -> int:
        """Make the restored volume's content; its size (the snapshot's bytes)."""
        with _backend(context, source.source.uri, secrets, verify=False) as tree:
            size = snapshots.find(backend, tree, source)["size"]
            if "view" in record:
                snapshots.make_view(tree, source, created.name)
                return size
            _remove_tree(backend, created.name)  # what an interrupted restore left
            try:
                snapshots.copy_tree(backend, tree, source, created.name)
            except snapshots.RESTORE_FAILURES as exc:
                _remove_tree(backend, created.name)
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"cannot restore snapshot {source.snapshot_id}: {exc}; nothing was restored",
                )
            except BaseException:
                _remove_tree(backend, created.name)
                raise
            log.info("restored snapshot %s into volume %s", source.name, created.name)
            return size

    def DeleteVolume(self, request, context):
        require(context, volume_id=request.volume_id)
        target = volume.parse_volume_id(request.volume_id)
        if target is None:  # not one this driver made (or already unreadable): nothing to delete
            return csi_pb2.DeleteVolumeResponse()
        secrets = dict(request.secrets)
        with (
            self.locks.hold(target.volume_id, context),
            # no root check: a base that is gone holds no volume, and that is a successful delete
            _backend(context, target.base_uri, secrets, verify=False) as backend,
        ):
            record = _read_record(backend, target.name) or {}
            retain = volume.flag_value(record.get("parameters", {}).get(volume.RETAIN, "")) or False
            if "view" in record:
                source = snapshots.parse_snapshot_id(record["source"])
                if source is not None:
                    with _backend(context, source.source.uri, secrets, verify=False) as tree:
                        snapshots.drop_view(tree, source.source.uri, target.name)
            elif not retain:
                with _backend(context, target.uri, secrets, verify=False) as tree:
                    kept = snapshots.store_of(tree, target.uri).names()
                    if kept:
                        context.abort(
                            grpc.StatusCode.FAILED_PRECONDITION,
                            f"volume {target.name} has {len(kept)} snapshot(s) or read-only restores "
                            "that read its data; delete those first",
                        )
                _remove_tree(backend, target.name)
            with suppress(NotFound):
                backend.remove_file(_record_path(target.name))
            log.info("deleted volume %s (%s)", target.name, "data kept" if retain else "data removed")
        return csi_pb2.DeleteVolumeResponse()

    def ValidateVolumeCapabilities(self, request, context):
        require(context, volume_id=request.volume_id)
        if not request.volume_capabilities:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "volume_capabilities are required")
        target = volume.parse_volume_id(request.volume_id)
        if target is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"volume {request.volume_id} does not exist")
        with _backend(context, target.base_uri, dict(request.secrets)) as backend:
            record = _read_record(backend, target.name)
            try:
                if record is None or "view" not in record:
                    backend.stat(target.name)
            except NotFound:
                context.abort(grpc.StatusCode.NOT_FOUND, f"volume {request.volume_id} does not exist")
        problems = [p for p in map(volume.check_capability, request.volume_capabilities) if p]
        if record is not None and "view" in record:
            problems += [
                "a volume restored read-only from a snapshot cannot be written"
                for c in request.volume_capabilities
                if not volume.is_read_only(c)
            ][:1]
        if problems:
            return csi_pb2.ValidateVolumeCapabilitiesResponse(message="; ".join(problems))
        confirmed = csi_pb2.ValidateVolumeCapabilitiesResponse.Confirmed(
            volume_context=request.volume_context,
            volume_capabilities=request.volume_capabilities,
            parameters=request.parameters,
        )
        return csi_pb2.ValidateVolumeCapabilitiesResponse(confirmed=confirmed)

    # ---- snapshots ---------------------------------------------------------------------------------------

    def CreateSnapshot(self, request, context):
        require(context, name=request.name, source_volume_id=request.source_volume_id)
        source = volume.parse_volume_id(request.source_volume_id)
        if source is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"volume {request.source_volume_id} does not exist")
        ref = snapshots.SnapshotRef(volume.directory_name(request.name), source)
        self.bases.add(source.base_uri)
        secrets = dict(request.secrets)
        with (
            self.locks.hold(f"snapshot {ref.name}@{source.base_uri}", context),
            _backend(context, source.base_uri, secrets) as backend,
        ):
            record = _read_record(backend, source.name)
            if record is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"volume {request.source_volume_id} does not exist")
            if "view" in record:
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"volume {source.name} is a read-only view of snapshot {record['source']}; "
                    "restore that snapshot instead",
                )
            with _backend(context, source.uri, secrets, verify=False) as tree:
                created = snapshots.create(backend, tree, ref, request.name)
        return csi_pb2.CreateSnapshotResponse(snapshot=snapshots.to_csi(created))

    def DeleteSnapshot(self, request, context):
        require(context, snapshot_id=request.snapshot_id)
        ref = snapshots.parse_snapshot_id(request.snapshot_id)
        if ref is None:  # not one this driver made: nothing to delete
            return csi_pb2.DeleteSnapshotResponse()
        secrets = dict(request.secrets)
        with (
            self.locks.hold(f"snapshot {ref.name}@{ref.source.base_uri}", context),
            _backend(context, ref.source.base_uri, secrets, verify=False) as backend,
            _backend(context, ref.source.uri, secrets, verify=False) as tree,
        ):
            snapshots.delete(backend, tree, ref)
            log.info("deleted snapshot %s of volume %s", ref.name, ref.source.name)
        return csi_pb2.DeleteSnapshotResponse()

    def ListSnapshots(self, request, context):
        secrets = dict(request.secrets)
        records: list[dict] = []
        if request.snapshot_id:
            ref = snapshots.parse_snapshot_id(request.snapshot_id)
            wanted = request.source_volume_id in ("", ref.source.volume_id) if ref else False
            if ref is not None and wanted:
                with _backend(context, ref.source.base_uri, secrets, verify=False) as backend:
                    found = snapshots.read_index(backend, ref.name)
                records = [found] if found and found["id"] == ref.snapshot_id else []
        elif request.source_volume_id:
            source = volume.parse_volume_id(request.source_volume_id)
            if source is not None:
                with _backend(context, source.base_uri, secrets, verify=False) as backend:
                    records = [r for r in snapshots.list_index(backend) if r["source"] == source.volume_id]
        else:
            for base in sorted(self.bases):
                with _backend(context, base, secrets, verify=False) as backend:
                    records += snapshots.list_index(backend)
        records.sort(key=lambda r: r["id"])
        page, next_token = _page(context, records, request.max_entries, request.starting_token)
        entries = [csi_pb2.ListSnapshotsResponse.Entry(snapshot=snapshots.to_csi(r)) for r in page]
        return csi_pb2.ListSnapshotsResponse(entries=entries, next_token=next_token)

    # ---- health ------------------------------------------------------------------------------------------

    def ControllerGetVolume(self, request, context):
        """The volume and its condition as the controller sees it: whether its data is still in place.
        CSI sends no secret with this call, so the controller uses its own credentials (its environment:
        AWS_* variables, instance roles); without any that the store accepts, the volume is reported
        normal and unchecked: a node's NodeGetVolumeStats, which has the mount, still reports it."""
        require(context, volume_id=request.volume_id)
        target = volume.parse_volume_id(request.volume_id)
        if target is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"volume {request.volume_id} does not exist")
        status = csi_pb2.ControllerGetVolumeResponse.VolumeStatus
        described = csi_pb2.Volume(volume_id=target.volume_id)
        try:
            backend = open_backend(target.base_uri, BackendOptions(), verify=False)
            try:
                record = _read_record(backend, target.name)
                if record is None:
                    context.abort(grpc.StatusCode.NOT_FOUND, f"volume {request.volume_id} does not exist")
                described, condition = _volume_of(target, record), _condition(backend, target, record)
            finally:
                backend.close()
        except PermissionDenied:
            where = redact_uri(target.base_uri)
            message = f"not checked: the controller has no credentials of its own for {where}"
            condition = csi_pb2.VolumeCondition(abnormal=False, message=message)
        except (PfsError, UsageError) as exc:  # typed errors carry no secrets
            message = f"cannot reach the volume's storage: {type(exc).__name__}: {exc}"
            condition = csi_pb2.VolumeCondition(abnormal=True, message=message)
        response = csi_pb2.ControllerGetVolumeResponse
        return response(volume=described, status=status(volume_condition=condition))

    def ControllerGetCapabilities(self, request, context):
        kinds = [
            ControllerRPC.CREATE_DELETE_VOLUME,
            ControllerRPC.CREATE_DELETE_SNAPSHOT,
            ControllerRPC.LIST_SNAPSHOTS,
            ControllerRPC.GET_VOLUME,
            ControllerRPC.VOLUME_CONDITION,
        ]
        return csi_pb2.ControllerGetCapabilitiesResponse(
            capabilities=[csi_pb2.ControllerServiceCapability(rpc=ControllerRPC(type=kind)) for kind in kinds]
        )
