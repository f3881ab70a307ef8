"""The CSI identity service: who the plugin is and what it offers (kubelet, sidecars and probes ask)."""

from __future__ import annotations

from google.protobuf import wrappers_pb2

from csi import DRIVER_NAME, csi_pb2, csi_pb2_grpc
from pfs import __version__

Service = csi_pb2.PluginCapability.Service


class IdentityService(csi_pb2_grpc.IdentityServicer):
    def GetPluginInfo(self, request, context):
        return csi_pb2.GetPluginInfoResponse(name=DRIVER_NAME, vendor_version=__version__)

    def GetPluginCapabilities(self, request, context):
        return csi_pb2.GetPluginCapabilitiesResponse(
            capabilities=[csi_pb2.PluginCapability(service=Service(type=Service.CONTROLLER_SERVICE))]
        )

    def Probe(self, request, context):
        return csi_pb2.ProbeResponse(ready=wrappers_pb2.BoolValue(value=True))
