"""`mount.pfs`: the helper mount(8) runs for `mount -t fuse.pfs URI DIR -o ...` and /etc/fstab lines.

mount(8) calls it as `mount.fuse.pfs SOURCE DIR [-sfnv] [-o OPTIONS] [-t TYPE]` (install it as
/sbin/mount.fuse.pfs and /sbin/mount.pfs). It mounts in the background, silently, like any mount helper.
"""

from __future__ import annotations

import getopt
import sys

from pfs.backends import BackendOptions
from pfs.errors import UsageError
from pfs.mount import lifecycle
from pfs.options import MountOptions, apply_o

USAGE = "usage: mount.pfs URI MOUNTPOINT [-o OPTIONS]"


def run(argv: list[str]) -> None:
    try:
        opts, args = getopt.gnu_getopt(argv, "sfnvho:t:N:")
    except getopt.GetoptError as exc:
        raise UsageError(f"{exc}; {USAGE}") from None
    if len(args) != 2 or ("-h", "") in opts:
        raise UsageError(USAGE)
    mount, backend = MountOptions(), BackendOptions()
    for flag, value in opts:
        if flag == "-o":
            apply_o(value, mount, backend)
    lifecycle.start(args[0], args[1], mount, backend, foreground=False)


def main() -> None:
    try:
        run(sys.argv[1:])
    except UsageError as exc:
        print(f"mount.pfs: {exc}", file=sys.stderr)
        sys.exit(32 if exc.exit_code else 0)  # 32: mount failure, as mount(8) defines it
