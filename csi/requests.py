"""Checks every service makes on its requests, ending a bad call with INVALID_ARGUMENT in one place."""

from __future__ import annotations

import grpc

from csi import csi_pb2, volume


def require(context: grpc.ServicerContext, **fields: str) -> None:
    """Abort unless every named field is set."""
    for name, value in fields.items():
        if not value:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{name} is required")


def require_capability(
    context: grpc.ServicerContext, capability: csi_pb2.VolumeCapability, present: bool
) -> None:
    if not present:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "volume_capability is required")
    problem = volume.check_capability(capability)
    if problem:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)


def require_capabilities(context: grpc.ServicerContext, capabilities) -> None:
    if not capabilities:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "volume_capabilities are required")
    for capability in capabilities:
        require_capability(context, capability, present=True)
