"""pfs-csi: the Kubernetes CSI plugin that gives pods pfs volumes through PersistentVolumeClaims.

It sits beside `pfs`, not on top of its internals: the node service starts and stops mounts with the
public `pfs mount` / `pfs umount` commands and watches them through the mount table and the mount root;
the controller creates and removes a volume's directory through the public backend library
(`pfs.backends.open_backend`), and takes and restores snapshots through `pfs.snapshots`' public functions.

Modules: `server` (command line, gRPC server, services registered by mode), `identity`, `controller`,
`node`, `snapshots` (VolumeSnapshots as pfs snapshots, restores), `records` (the controller's JSON
records on a backend), `recovery` (remounts what died), `health` (bounded probes of mounts), `state` (what
is staged and published, on disk), `volume` (volume ids, volume attributes to `pfs mount` options, secrets
to environment variables), `mounter` (the only code here that runs a process), `locks`, `calllog` (the
interceptor that logs every call with secrets stripped).

`csi_pb2.py` and `csi_pb2_grpc.py` are generated from `proto/csi.proto`; regenerate them from the
repository root with:

    python -m grpc_tools.protoc --proto_path=csi=proto --python_out=. --grpc_python_out=. proto/csi.proto
"""

DRIVER_NAME = "csi.pfs.io"
