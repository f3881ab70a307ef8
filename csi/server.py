"""`pfs-csi`: the CSI plugin's command line and gRPC server; registers the services its mode asks for.

Modes: `controller` (identity + controller: the Deployment with csi-provisioner), `node` (identity + node:
the DaemonSet next to kubelet; also runs mount recovery), `all` (everything, for tests and small setups).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from concurrent import futures

import grpc

from csi import csi_pb2_grpc
from csi.calllog import CallLogger
from csi.controller import ControllerService
from csi.identity import IdentityService
from csi.locks import OperationLocks
from csi.mounter import PROBE_TIMEOUT, Mounter
from csi.node import NodeService
from csi.recovery import Recovery
from csi.state import StateStore

log = logging.getLogger("csi")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pfs-csi", description="CSI plugin serving pfs volumes to Kubernetes."
    )
    parser.add_argument("--endpoint", required=True, help="unix:///path/csi.sock (or a plain socket path)")
    parser.add_argument(
        "--node-id", default=os.environ.get("NODE_ID", ""), help="this node's name [$NODE_ID]"
    )
    parser.add_argument("--mode", choices=("controller", "node", "all"), default="all")
    parser.add_argument("--state-dir", default="/var/lib/pfs-csi", help="node state (keep it on the host)")
    parser.add_argument("--recovery-interval", type=float, default=10.0, metavar="S", help="seconds [10]")
    parser.add_argument(
        "--probe-timeout", type=float, default=PROBE_TIMEOUT, metavar="S",
        help=f"a mount not answering within this is reported hung [{PROBE_TIMEOUT:.0f}]",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=16, help="concurrent calls [16]")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.mode != "controller" and not args.node_id:
        parser.error("--node-id (or $NODE_ID) is required in node mode")
    return args


def socket_path(endpoint: str) -> str:
    return endpoint.removeprefix("unix://") if endpoint.startswith("unix://") else endpoint


def serve(args: argparse.Namespace) -> None:
    locks = OperationLocks()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers), interceptors=[CallLogger()])
    csi_pb2_grpc.add_IdentityServicer_to_server(IdentityService(), server)
    if args.mode in ("controller", "all"):
        csi_pb2_grpc.add_ControllerServicer_to_server(ControllerService(locks), server)
    recovery = None
    if args.mode in ("node", "all"):
        store, mounter = StateStore(args.state_dir), Mounter(probe_timeout=args.probe_timeout)
        csi_pb2_grpc.add_NodeServicer_to_server(NodeService(args.node_id, store, mounter, locks), server)
        recovery = Recovery(store, mounter, locks)
    path = socket_path(args.endpoint)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if os.path.exists(path):  # left by a previous instance of the plugin
        os.remove(path)
    server.add_insecure_port(f"unix://{os.path.abspath(path)}")
    server.start()
    log.info("pfs-csi serving %s on %s (node %s)", args.mode, path, args.node_id or "-")
    if recovery is not None:
        recovery.start(
            args.recovery_interval
        )  # its first pass runs now: repairs what died while we were down
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    stopping.wait()
    log.info("stopping (mounts stay up)")
    if recovery is not None:
        recovery.stop()
    server.stop(grace=5).wait()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    serve(args)
