"""Mount options: their defaults, and the `-o a,b=c` syntax shared by `pfs mount`, `mount.pfs` and fstab."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from pfs.backends import BackendOptions
from pfs.errors import UsageError

DEFAULT_STATE_DIR = "/var/tmp/pfs"
DEFAULT_CACHE_DIR = "/var/cache/pfs"

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from '4M', '10G', '512KiB' or a plain number; ValueError otherwise."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    number = float(value[: len(value) - len(unit)])
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(text)
    return int(number * _UNITS[unit])


@dataclass
class MountOptions:
    read_only: bool = False
    allow_other: bool = False
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    umask: int = 0o022
    # Seconds attributes, listings and negative lookups are trusted, here and in the kernel: another
    # client's change is seen within this time.
    metadata_ttl: float = 10.0
    threads: int = 32  # backend calls in flight at once
    readahead_kb: int = 1024  # the mount's kernel readahead: 1 MiB reads instead of 128 KiB ones
    staging_dir: str = f"{DEFAULT_STATE_DIR}/staging"
    # After a failed upload: "keep" the bytes staged for a retry (next fsync/close, unmount) or "drop" them.
    failed_uploads: str = "keep"
    # Write-back: close returns once the bytes are durable in staging_dir; the upload follows in the
    # background (fsync and unmount wait for it; a killed daemon's are replayed by the next mount).
    writeback: bool = False
    cache_dir: str = DEFAULT_CACHE_DIR  # the disk tier, shared by every mount on the node
    cache_size: int = 20 << 30  # bytes of the disk tier; 0 turns it off
    free_space_ratio: float = 0.1  # the disk tier shrinks to keep this share of its file system free
    memory_limit: int = 160 << 20  # every block and upload part this mount holds in memory
    block_size: int = 4 << 20
    prefetch: int = 64 << 20  # how far ahead of a sequential reader blocks are fetched
    metrics_port: int = 0  # serve Prometheus metrics on 127.0.0.1:PORT (0: off)
    log_file: str | None = None
    debug: bool = False
    snapshot: str | None = None  # serve this snapshot of the URI, read-only (pfs/snapshots)


# Options mount(8) passes along that mean nothing to a FUSE filesystem of this kind.
_IGNORED = {
    "defaults", "auto", "noauto", "user", "nouser", "users", "dev", "nodev", "suid", "nosuid", "exec",
    "noexec", "_netdev", "nofail", "atime", "noatime", "relatime", "strictatime", "sync", "async", "rw",
    "default_permissions",
}  # fmt: skip

_FLAGS = {"ro": "read_only", "allow_other": "allow_other", "debug": "debug", "writeback": "writeback"}


@dataclass(frozen=True)
class _Value:
    """How an option's text becomes its value, and what values are allowed (said in every error)."""

    convert: Callable[[str], Any]
    allowed: str
    ok: Callable[[Any], bool] = lambda value: True


def _seconds(value: float, minimum_open: bool) -> bool:
    return math.isfinite(value) and (value > 0 if minimum_open else value >= 0)


_ID = _Value(int, "a number from 0 to 4294967294", lambda v: 0 <= v < 0xFFFFFFFF)
_SIZE = _Value(parse_size, "a size such as 512K, 64M or 20G")
_PATH = _Value(str, "a path", bool)
_MOUNT_VALUES = {
    "uid": _ID,
    "gid": _ID,
    "umask": _Value(lambda v: int(v, 8), "octal from 000 to 777", lambda v: 0 <= v <= 0o777),
    "metadata_ttl": _Value(float, "seconds, 0 or more", lambda v: _seconds(v, minimum_open=False)),
    "threads": _Value(int, "a number from 1 to 1024", lambda v: 1 <= v <= 1024),
    "readahead_kb": _Value(int, "kilobytes from 0 to 1048576", lambda v: 0 <= v <= 1 << 20),
    "staging_dir": _PATH,
    "failed_uploads": _Value(str, "keep or drop", lambda v: v in ("keep", "drop")),
    "log_file": _PATH,
    "cache_dir": _PATH,
    "cache_size": _SIZE,
    "free_space_ratio": _Value(float, "a ratio from 0 to below 1", lambda v: 0 <= v < 1),
    "memory_limit": _SIZE,
    "block_size": _SIZE,
    "prefetch": _SIZE,
    "metrics_port": _Value(int, "a port from 1 to 65535, or 0 for none", lambda v: 0 <= v <= 65535),
    "snapshot": _Value(str, "a snapshot name", bool),
}
_BACKEND_VALUES = {
    "endpoint": _Value(str, "HOST:PORT", bool),
    "region": _Value(str, "a region name", bool),
    "timeout": _Value(float, "seconds, more than 0", lambda v: _seconds(v, minimum_open=True)),
    "credentials": _PATH,
    "profile": _Value(str, "a profile name", bool),
}
_BACKEND_FIELD = {"credentials": "credentials_file"}
_BACKEND_FLAGS = {"anonymous": "anonymous"}


def apply_o(text: str, mount: MountOptions, backend: BackendOptions) -> None:
    """Apply a comma-separated `-o` string to both option sets; unknown or malformed options are errors."""
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, has_value, value = item.partition("=")
        set_option(key, value if has_value else None, mount, backend)


def set_option(key: str, value: str | None, mount: MountOptions, backend: BackendOptions) -> None:
    """Set one option by its `-o` name (`value` None for a flag)."""
    if key in _IGNORED or key.startswith("x-"):
        return
    if value is None and key in _FLAGS:
        setattr(mount, _FLAGS[key], True)
    elif value is None and key in _BACKEND_FLAGS:
        setattr(backend, _BACKEND_FLAGS[key], True)
    elif value is not None and key in _MOUNT_VALUES:
        setattr(mount, key, _convert(key, value, _MOUNT_VALUES[key]))
    elif value is not None and key in _BACKEND_VALUES:
        setattr(backend, _BACKEND_FIELD.get(key, key), _convert(key, value, _BACKEND_VALUES[key]))
    else:
        raise UsageError(f"unknown mount option '{key}' (see 'pfs mount --help')")


def _convert(key: str, text: str, kind: _Value) -> Any:
    try:
        value = kind.convert(text)
        if kind.ok(value):
            return value
    except (ValueError, OverflowError):
        pass
    raise UsageError(f"bad value for option '{key}': {text!r} (allowed: {kind.allowed})")


def check(options: MountOptions) -> None:
    """Reject values no mount can work with, before anything starts."""
    if options.block_size < 64 << 10 or options.block_size > 64 << 20:
        raise UsageError("block_size must be between 64K and 64M")
    if options.memory_limit < 4 * options.block_size:
        raise UsageError("memory_limit must hold at least 4 blocks")


def daemon_config(uri: str, mountpoint: str, mount: MountOptions, backend: BackendOptions) -> str:
    """What `pfs mount` hands its background daemon on stdin (read back by `read_daemon_config`)."""
    return json.dumps(
        {"uri": uri, "mountpoint": mountpoint, "mount": asdict(mount), "backend": asdict(backend)}
    )


def read_daemon_config(text: str) -> tuple[str, str, MountOptions, BackendOptions]:
    config = json.loads(text)
    mount, backend = MountOptions(**config["mount"]), BackendOptions(**config["backend"])
    return config["uri"], config["mountpoint"], mount, backend
