"""The CSI controller service: dynamic provisioning of pfs volumes as directories under a base URI.

A StorageClass names a base URI (`uri` parameter); each volume is the directory `<base>/<name>` with `name`
made from the CreateVolume name, and its id `<name>@<base URI>` is enough to find it again (it holds no
secret: credentials come from the provisioner secret on every call). What a CreateVolume asked for is
kept next to the volume, in `<base>/.<name>.csi.json`, so a repeated call is recognised (same
answer) and a conflicting one refused (ALREADY_EXISTS) by any controller replica. Backends are used only
through the public `pfs.backends` library.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import grpc

from csi import csi_pb2, csi_pb2_grpc, volume
from csi.locks import OperationLocks
from csi.requests import require, require_capabilities
from pfs.backends import Backend, Kind, open_backend, redact_uri
from pfs.errors import AlreadyExists, NotFound, PfsError, UsageError

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
    except PfsError as exc:  # typed backend errors carry no secrets
        context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
    finally:
        backend.close()


def _record_path(name: str) -> str:
    return f".{name}.csi.json"


def _read_record(backend: Backend, name: str) -> dict | None:
    try:
        entry = backend.stat(_record_path(name))
    except NotFound:
        return None
    reader = backend.open_reader(_record_path(name), entry.size)
    try:
        return json.loads(reader.read(0, entry.size))
    finally:
        reader.close()


def _write_record(backend: Backend, name: str, record: dict) -> None:
    data = json.dumps(record, sort_keys=True).encode()
    backend.write_file(_record_path(name), io.BytesIO(data), len(data))


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


class ControllerService(csi_pb2_grpc.ControllerServicer):
    def __init__(self, locks: OperationLocks) -> None:
        self.locks = locks

    def CreateVolume(self, request, context):
        require(context, name=request.name)
        require_capabilities(context, request.volume_capabilities)
        if request.HasField("volume_content_source"):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "volumes cannot be cloned or restored; mount a pfs snapshot with the 'snapshot' parameter",
            )
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
        with (
            self.locks.hold(created.volume_id, context),
            _backend(context, base, dict(request.secrets)) as backend,
        ):
            existing = _read_record(backend, created.name)
            if existing is not None and existing != record:
                context.abort(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"volume {request.name} already exists with other parameters or capacity",
                )
            if existing is None:
                with suppress(AlreadyExists):  # a directory left by an interrupted call is adopted
                    backend.make_dir(created.name)
                _write_record(backend, created.name, record)
                log.info("created volume %s at %s", created.name, redact_uri(created.uri))
        volume_context = {k: v for k, v in parameters.items() if k not in (volume.URI, volume.RETAIN)}
        volume_context[volume.URI] = created.uri
        return csi_pb2.CreateVolumeResponse(
            volume=csi_pb2.Volume(
                volume_id=created.volume_id, capacity_bytes=capacity, volume_context=volume_context
            )
        )

    def DeleteVolume(self, request, context):
        require(context, volume_id=request.volume_id)
        target = volume.parse_volume_id(request.volume_id)
        if target is None:  # not one this driver made (or already unreadable): nothing to delete
            return csi_pb2.DeleteVolumeResponse()
        with (
            self.locks.hold(target.volume_id, context),
            # no root check: a base that is gone holds no volume, and that is a successful delete
            _backend(context, target.base_uri, dict(request.secrets), verify=False) as backend,
        ):
            record = _read_record(backend, target.name) or {}
            retain = volume.flag_value(record.get("parameters", {}).get(volume.RETAIN, "")) or False
            if not retain:
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
            try:
                backend.stat(target.name)
            except NotFound:
                context.abort(grpc.StatusCode.NOT_FOUND, f"volume {request.volume_id} does not exist")
        problems = [p for p in map(volume.check_capability, request.volume_capabilities) if p]
        if problems:
            return csi_pb2.ValidateVolumeCapabilitiesResponse(message="; ".join(problems))
        confirmed = csi_pb2.ValidateVolumeCapabilitiesResponse.Confirmed(
            volume_context=request.volume_context,
            volume_capabilities=request.volume_capabilities,
            parameters=request.parameters,
        )
        return csi_pb2.ValidateVolumeCapabilitiesResponse(confirmed=confirmed)

    def ControllerGetCapabilities(self, request, context):
        return csi_pb2.ControllerGetCapabilitiesResponse(
            capabilities=[
                csi_pb2.ControllerServiceCapability(
                    rpc=ControllerRPC(type=ControllerRPC.CREATE_DELETE_VOLUME)
                )
            ]
        )
