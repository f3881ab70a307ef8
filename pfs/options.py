"""Mount options: their defaults, and the `-o a,b=c` syntax shared by `pfs mount`, `mount.pfs` and fstab."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from pfs.backends import BackendOptions
from pfs.errors import UsageError

DEFAULT_STATE_DIR = "/var/tmp/pfs"


@dataclass
class MountOptions:
    read_only: bool = False
    allow_other: bool = False
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    umask: int = 0o022
    metadata_ttl: float = 1.0  # seconds attributes and entries are trusted, here and in the kernel
    threads: int = 32  # backend calls in flight at once
    readahead_kb: int = 1024  # the mount's kernel readahead: 1 MiB reads instead of 128 KiB ones
    staging_dir: str = f"{DEFAULT_STATE_DIR}/staging"
    log_file: str | None = None
    debug: bool = False
    snapshot: str | None = None  # serve this snapshot of the URI, read-only (pfs/snapshots)


# Options mount(8) passes along that mean nothing to a FUSE filesystem of this kind.
_IGNORED = {
    "defaults", "auto", "noauto", "user", "nouser", "users", "dev", "nodev", "suid", "nosuid", "exec",
    "noexec", "_netdev", "nofail", "atime", "noatime", "relatime", "strictatime", "sync", "async", "rw",
    "default_permissions",
}  # fmt: skip

_FLAGS = {"ro": "read_only", "allow_other": "allow_other", "debug": "debug"}
_MOUNT_VALUES = {
    "uid": int,
    "gid": int,
    "umask": lambda v: int(v, 8),
    "metadata_ttl": float,
    "threads": int,
    "readahead_kb": int,
    "staging_dir": str,
    "log_file": str,
    "snapshot": str,
}
_BACKEND_VALUES = {
    "endpoint": str,
    "region": str,
    "timeout": float,
    "credentials": str,
    "profile": str,
}
_BACKEND_FIELD = {"credentials": "credentials_file"}
_BACKEND_FLAGS = {"anonymous": "anonymous"}


def apply_o(text: str, mount: MountOptions, backend: BackendOptions) -> None:
    """Apply a comma-separated `-o` string to both option sets; unknown or malformed options are errors."""
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, has_value, value = item.partition("=")
        if key in _IGNORED or key.startswith("x-"):
            continue
        if not has_value and key in _FLAGS:
            setattr(mount, _FLAGS[key], True)
        elif not has_value and key in _BACKEND_FLAGS:
            setattr(backend, _BACKEND_FLAGS[key], True)
        elif has_value and key in _MOUNT_VALUES:
            setattr(mount, key, _convert(key, value, _MOUNT_VALUES[key]))
        elif has_value and key in _BACKEND_VALUES:
            setattr(backend, _BACKEND_FIELD.get(key, key), _convert(key, value, _BACKEND_VALUES[key]))
        else:
            raise UsageError(f"unknown mount option '{key}' (see 'pfs mount --help')")


def _convert(key: str, value: str, kind):
    try:
        return kind(value)
    except ValueError:
        raise UsageError(f"bad value for mount option '{key}': {value!r}") from None


def to_dict(options: MountOptions) -> dict:
    return {f.name: getattr(options, f.name) for f in fields(options)}
