"""Mount options, each declared once in `OPTIONS`: their defaults, flags and meaning, and the `-o a,b=c`
syntax shared by `pfs mount`, `mount.pfs` and fstab."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
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


@dataclass(frozen=True)
class _Value:
    """How an option's text becomes its value, what values are allowed (said in every error), and how a
    value is written back for people (the default shown in --help and the README)."""

    convert: Callable[[str], Any]
    allowed: str
    ok: Callable[[Any], bool] = lambda value: True
    show: Callable[[Any], str] = str


def _seconds(value: float, minimum_open: bool) -> bool:
    return math.isfinite(value) and (value > 0 if minimum_open else value >= 0)


def format_size(size: int) -> str:
    """'20G', '160M' or '512K': the largest unit `size` is a whole number of (the inverse of parse_size)."""
    for unit in ("T", "G", "M", "K"):
        if size and size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)


_NUMBER = "{:g}".format
_ID = _Value(int, "a number from 0 to 4294967294", lambda v: 0 <= v < 0xFFFFFFFF)
_SIZE = _Value(parse_size, "a size such as 512K, 64M or 20G", show=format_size)
_PATH = _Value(str, "a path", bool)
_TTL = _Value(float, "seconds, 0 or more", lambda v: _seconds(v, minimum_open=False), _NUMBER)
_TIMEOUT = _Value(float, "seconds, more than 0", lambda v: _seconds(v, minimum_open=True), _NUMBER)
_UMASK = _Value(lambda v: int(v, 8), "octal from 000 to 777", lambda v: 0 <= v <= 0o777, "{:03o}".format)
_RATIO = _Value(float, "a ratio from 0 to below 1", lambda v: 0 <= v < 1, _NUMBER)
_HOST_PORT = _Value(str, "HOST:PORT", bool)
_REGION = _Value(str, "a region name", bool)
_PROFILE = _Value(str, "a profile name", bool)
_SNAPSHOT = _Value(str, "a snapshot name", bool)
_THREADS = _Value(int, "a number from 1 to 1024", lambda v: 1 <= v <= 1024)
_READAHEAD = _Value(int, "kilobytes from 0 to 1048576", lambda v: 0 <= v <= 1 << 20)
_FAILED_UPLOADS = _Value(str, "keep or drop", lambda v: v in ("keep", "drop"))
_PORT = _Value(int, "a port from 1 to 65535, or 0 for none", lambda v: 0 <= v <= 65535)

# BackendOptions keeps its own defaults: pfs.backends never imports this module.
_BACKEND_DEFAULTS = {f.name: f.default for f in fields(BackendOptions)}


@dataclass(frozen=True)
class Option:
    """One mount option, declared once: its `-o` form, flag, default and meaning. `MountOptions`, the `-o`
    parser, the command-line flags and their help are all made from `OPTIONS`; the README's table of
    options is checked against it (tests/test_options.py)."""

    key: str  # the `-o` name
    meaning: str  # for people: the flag's --help and the README's table
    value: _Value | None = None  # how `key=TEXT` is read; None: a switch, `-o key` alone turns it on
    metavar: str = ""  # TEXT in the `key=TEXT` form
    default: Any = None  # of a backend option: BackendOptions' own
    default_factory: Callable[[], Any] | None = None
    shown_default: str | None = None  # when the default is not a value the option itself reads
    flag: str | None = None  # its `pfs mount` flag, if it has one
    attr: str = ""  # its field in MountOptions or BackendOptions, when not `key`
    backend: bool = False  # a BackendOptions field: also taken by the commands that only reach a backend

    def __post_init__(self) -> None:
        object.__setattr__(self, "attr", self.attr or self.key)
        if self.backend:
            object.__setattr__(self, "default", _BACKEND_DEFAULTS[self.attr])

    @property
    def form(self) -> str:
        """How it is written after `-o`: `ro`, `cache_size=SIZE`."""
        return self.key if self.value is None else f"{self.key}={self.metavar}"

    @property
    def default_text(self) -> str:
        """The default as --help and the README say it; empty for none."""
        if self.shown_default is not None:
            return self.shown_default
        if self.value is None:
            return "on" if self.default else "off"
        return "" if self.default is None else self.value.show(self.default)


def _mount(key: str, value: _Value | None, default: Any, meaning: str, **more: Any) -> Option:
    return Option(key, meaning, value, default=default, **more)


def _backend(key: str, value: _Value | None, meaning: str, **more: Any) -> Option:
    return Option(key, meaning, value, backend=True, **more)


# fmt: off
OPTIONS = (
    _mount("ro", None, False, "refuse every change with EROFS; files are kept open in the kernel (no-open "
           "mode: epochs after the first never reach pfs)", flag="--read-only", attr="read_only"),
    _mount("allow_other", None, False, "let other users use the mount"),
    _mount("uid", _ID, None, "owner shown for entries whose store keeps none (object stores, HDFS); "
           "`file://` shows the files' own", metavar="N", default_factory=os.getuid,
           shown_default="the mounting user"),
    _mount("gid", _ID, None, "group shown for entries whose store keeps none", metavar="N",
           default_factory=os.getgid, shown_default="the mounting user's group"),
    _mount("umask", _UMASK, 0o022, "permissions shown for entries whose store keeps none", metavar="MASK"),
    _mount("metadata_ttl", _TTL, 10.0, "seconds attributes, listings and missing names are trusted (here "
           "and in the kernel): another client's change is seen within this time", metavar="S",
           flag="--metadata-ttl"),
    _backend("timeout", _TIMEOUT, "a backend request unanswered for this long fails with EIO (retries "
             "included)", metavar="S", flag="--timeout"),
    _backend("endpoint", _HOST_PORT, "S3-compatible endpoint (`http://...` for plain HTTP)",
             metavar="HOST:PORT", flag="--endpoint"),
    _backend("region", _REGION, "object-store region", metavar="R", flag="--region"),
    _backend("credentials", _PATH, "AWS-style credentials file (default: the usual AWS_* environment "
             "variables)", metavar="FILE", flag="--credentials", attr="credentials_file"),
    _backend("profile", _PROFILE, "the section of the credentials file to use", metavar="P",
             shown_default="default"),
    _backend("anonymous", None, "unsigned requests (public buckets)"),
    _mount("threads", _THREADS, 32, "backend requests in flight at once", metavar="N"),
    _mount("readahead_kb", _READAHEAD, 1024, "kernel readahead of the mount: 1 MiB requests instead of "
           "128 KiB", metavar="N"),
    _mount("staging_dir", _PATH, f"{DEFAULT_STATE_DIR}/staging", "where written files are staged until "
           "uploaded", metavar="DIR"),
    _mount("failed_uploads", _FAILED_UPLOADS, "keep", "after a failed upload, keep the bytes staged for a "
           "retry (next fsync/close, unmount) or drop them (see Consistency model)", metavar="keep|drop"),
    _mount("writeback", None, False, "`close()` returns once the file is durable in `staging_dir`; the "
           "upload follows in the background (fsync and unmount wait for it; a killed daemon's are replayed "
           "by the next mount; see Consistency model: write-back)"),
    _mount("snapshot", _SNAPSHOT, None, "mount snapshot NAME of the URI (see 'pfs snapshot'): read-only, "
           "never lists the backend", metavar="NAME", flag="--snapshot"),
    _mount("log_file", _PATH, None, "daemon log", metavar="FILE", flag="--log-file",
           shown_default=f"{DEFAULT_STATE_DIR}/logs/..."),
    _mount("debug", None, False, "log every FUSE request", flag="--debug"),
    _mount("cache_dir", _PATH, DEFAULT_CACHE_DIR, "the disk cache, shared by every mount on the node and "
           "kept across remounts", metavar="DIR", flag="--cache-dir"),
    _mount("cache_size", _SIZE, 20 << 30, "bytes of disk cache (`0` turns the disk tier off)",
           metavar="SIZE", flag="--cache-size"),
    _mount("free_space_ratio", _RATIO, 0.1, "the disk cache shrinks to keep this share of its file system "
           "free", metavar="R", flag="--free-space-ratio"),
    _mount("memory_limit", _SIZE, 160 << 20, "every cached, prefetched or in-flight block of the mount, "
           "small new files being written and the parts of uploads in flight, however many files are open",
           metavar="SIZE", flag="--memory-limit"),
    _mount("block_size", _SIZE, 4 << 20, "cache block; sequential streams fetch several per request",
           metavar="SIZE"),
    _mount("prefetch", _SIZE, 64 << 20, "how far ahead of a sequential reader blocks are fetched",
           metavar="SIZE"),
    _mount("metrics_port", _PORT, 0, "Prometheus metrics on `http://127.0.0.1:N/metrics`", metavar="N",
           flag="--metrics-port", shown_default="off"),
)
# fmt: on
_BY_KEY = {option.key: option for option in OPTIONS}
_MOUNT_FIELDS = {option.attr: option for option in OPTIONS if not option.backend}


def _default(attr: str) -> Any:
    """MountOptions' default for `attr`, as its option declares it."""
    option = _MOUNT_FIELDS[attr]
    return option.default if option.default_factory is None else field(default_factory=option.default_factory)


@dataclass
class MountOptions:
    """The options of one mount; each field's meaning and default are in `OPTIONS`."""

    read_only: bool = _default("read_only")
    allow_other: bool = _default("allow_other")
    uid: int = _default("uid")
    gid: int = _default("gid")
    umask: int = _default("umask")
    metadata_ttl: float = _default("metadata_ttl")
    threads: int = _default("threads")
    readahead_kb: int = _default("readahead_kb")
    staging_dir: str = _default("staging_dir")
    failed_uploads: str = _default("failed_uploads")
    writeback: bool = _default("writeback")
    cache_dir: str = _default("cache_dir")
    cache_size: int = _default("cache_size")
    free_space_ratio: float = _default("free_space_ratio")
    memory_limit: int = _default("memory_limit")
    block_size: int = _default("block_size")
    prefetch: int = _default("prefetch")
    metrics_port: int = _default("metrics_port")
    log_file: str | None = _default("log_file")
    debug: bool = _default("debug")
    snapshot: str | None = _default("snapshot")


# Options mount(8) passes along that mean nothing to a FUSE filesystem of this kind.
_IGNORED = {
    "defaults", "auto", "noauto", "user", "nouser", "users", "dev", "nodev", "suid", "nosuid", "exec",
    "noexec", "_netdev", "nofail", "atime", "noatime", "relatime", "strictatime", "sync", "async", "rw",
    "default_permissions",
}  # fmt: skip


def apply_o(text: str, mount: MountOptions, backend: BackendOptions) -> None:
    """Apply a comma-separated `-o` string to both option sets; unknown or malformed options are errors."""
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, has_value, value = item.partition("=")
        set_option(key, value if has_value else None, mount, backend)


def set_option(key: str, value: str | None, mount: MountOptions, backend: BackendOptions) -> None:
    """Set one option by its `-o` name (`value` None for a switch)."""
    if key in _IGNORED or key.startswith("x-"):
        return
    option = _BY_KEY.get(key)
    if option is None or (value is None) != (option.value is None):
        raise UsageError(f"unknown mount option '{key}' (see 'pfs mount --help')")
    parsed = True if value is None or option.value is None else _convert(key, value, option.value)
    setattr(backend if option.backend else mount, option.attr, parsed)


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
