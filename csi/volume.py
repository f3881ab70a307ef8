"""What a volume is: its id, the `pfs mount` options its attributes ask for, and the credentials it uses.

Volume ids, mount options and error messages made here end up in logs, Kubernetes objects and command
lines, so nothing returned here may hold a secret, except `credentials_env`, whose result only ever
becomes the environment of a child `pfs mount`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from csi import csi_pb2
from pfs.backends import BackendOptions

Mode = csi_pb2.VolumeCapability.AccessMode.Mode

# ReadWriteOnce, ReadWriteOncePod, ReadOnlyMany and ReadWriteMany. A single writer among many nodes cannot
# be enforced by a shared filesystem, so MULTI_NODE_SINGLE_WRITER is refused rather than silently allowed.
SUPPORTED_MODES = frozenset(
    {
        Mode.SINGLE_NODE_WRITER,
        Mode.SINGLE_NODE_READER_ONLY,
        Mode.MULTI_NODE_READER_ONLY,
        Mode.MULTI_NODE_MULTI_WRITER,
        Mode.SINGLE_NODE_SINGLE_WRITER,
        Mode.SINGLE_NODE_MULTI_WRITER,
    }
)
READ_ONLY_MODES = frozenset({Mode.SINGLE_NODE_READER_ONLY, Mode.MULTI_NODE_READER_ONLY})

# Volume attributes (and StorageClass parameters) the plugin reads itself. Every other plain attribute
# becomes a `pfs mount -o` option: `cacheSize: 10G` -> `-o cache_size=10G`, `anonymous: "true"` ->
# `-o anonymous`, so options pfs gains later work without a change here.
URI = "uri"
READ_ONLY = "readOnly"
MOUNT_OPTIONS = "mountOptions"
RETAIN = "retain"  # StorageClass only: keep the data when the volume is deleted
SNAPSHOT = "snapshot"  # serve this pfs snapshot of the URI (a `pfs mount -o` option like the others)
PLUGIN_KEYS = frozenset({URI, READ_ONLY, MOUNT_OPTIONS, RETAIN})

_NAME_OK = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_OPTION_KEY = re.compile(r"[a-z][a-z0-9_]*")

# CSI secret keys (as written in a Kubernetes Secret) and the environment variables `pfs mount` reads.
_SECRET_ENV = {
    "accessKeyId": "AWS_ACCESS_KEY_ID",
    "secretAccessKey": "AWS_SECRET_ACCESS_KEY",
    "sessionToken": "AWS_SESSION_TOKEN",
}
_ENV_NAMES = frozenset(_SECRET_ENV.values())


class VolumeError(ValueError):
    """A request names a volume or options that cannot work; the message is safe to return and log."""


class UnknownVolume(VolumeError):
    """The id names no volume this plugin can find."""


@dataclass(frozen=True)
class DynamicVolume:
    """A provisioned volume: the directory `name` under the StorageClass's base URI."""

    name: str
    base_uri: str

    @property
    def volume_id(self) -> str:
        return f"{self.name}@{self.base_uri}"

    @property
    def uri(self) -> str:
        head, question, query = self.base_uri.partition("?")
        return f"{head.rstrip('/')}/{self.name}{question}{query}"


def valid_name(name: str) -> bool:
    """Whether `name` is a name `directory_name` can return (volume directories, snapshot names)."""
    return _NAME_OK.fullmatch(name) is not None


def parse_volume_id(volume_id: str) -> DynamicVolume | None:
    """The provisioned volume an id names, or None for an id this plugin did not make (a static PV)."""
    name, at, base = volume_id.partition("@")
    if not at or not _NAME_OK.fullmatch(name) or "://" not in base:
        return None
    return DynamicVolume(name, base)


def directory_name(request_name: str) -> str:
    """A backend-safe directory name for a CreateVolume name; distinct names give distinct directories."""
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", request_name.lower()).strip("-.")
    if cleaned == request_name and _NAME_OK.fullmatch(cleaned):
        return cleaned
    digest = hashlib.sha256(request_name.encode()).hexdigest()[:12]
    return f"{cleaned[:48] or 'vol'}-{digest}"


def volume_uri(volume_id: str, attributes: dict[str, str]) -> str:
    """The URI to mount: the `uri` attribute (static and provisioned volumes), else what the id says."""
    uri = attributes.get(URI, "")
    if uri:
        return uri
    volume = parse_volume_id(volume_id)
    if volume is None:
        raise UnknownVolume(f"volume {volume_id} has no 'uri' attribute and is not a volume this driver made")
    return volume.uri


def check_capability(capability: csi_pb2.VolumeCapability) -> str | None:
    """Why pfs cannot serve `capability`, or None when it can."""
    if capability.HasField("block"):
        return "block access is not supported: pfs volumes are filesystems (use volumeMode: Filesystem)"
    if not capability.HasField("mount"):
        return "a volume capability must ask for mount (filesystem) access"
    if not capability.HasField("access_mode"):
        return "a volume capability needs an access mode"
    if capability.access_mode.mode not in SUPPORTED_MODES:
        name = Mode.Name(capability.access_mode.mode)
        return f"access mode {name} is not supported (use ReadWriteOnce, ReadOnlyMany or ReadWriteMany)"
    return None


def is_read_only(capability: csi_pb2.VolumeCapability) -> bool:
    return capability.access_mode.mode in READ_ONLY_MODES


def _snake(key: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower()


def flag_value(value: str) -> bool | None:
    lowered = value.strip().lower()
    return {"true": True, "yes": True, "false": False, "no": False}.get(lowered)


def mount_options(attributes: dict[str, str], read_only: bool, mount_flags: list[str]) -> list[str]:
    """`pfs mount -o` items for a volume's attributes, access mode and PV mountOptions."""
    options = []
    for key, value in sorted(attributes.items()):
        if key in PLUGIN_KEYS or "/" in key or "." in key:  # kubernetes' own keys carry a domain prefix
            continue
        option = _snake(key)
        if not _OPTION_KEY.fullmatch(option) or "," in value:
            raise VolumeError(f"volume attribute {key!r} cannot be a mount option")
        flag = flag_value(value)
        if flag is None:
            options.append(f"{option}={value}")
        elif flag:
            options.append(option)
    if read_only or flag_value(attributes.get(READ_ONLY, "")):
        options.append("ro")
    for text in [attributes.get(MOUNT_OPTIONS, ""), *mount_flags]:
        options.extend(item.strip() for item in text.split(",") if item.strip())
    return options


def credentials_env(secrets: dict[str, str]) -> dict[str, str]:
    """Environment variables that hand the CSI secrets to `pfs mount` (never on its command line)."""
    env = {}
    for key, value in secrets.items():
        name = _SECRET_ENV.get(key, key)
        if name not in _ENV_NAMES:
            raise VolumeError(
                f"unknown secret key {key!r} (expected one of {', '.join(sorted(_SECRET_ENV))})"
            )
        env[name] = value
    return env


def backend_options(secrets: dict[str, str]) -> BackendOptions:
    """Backend options for the controller's own calls, from the same secrets."""
    env = credentials_env(secrets)
    return BackendOptions(
        access_key=env.get("AWS_ACCESS_KEY_ID"),
        secret_key=env.get("AWS_SECRET_ACCESS_KEY"),
        session_token=env.get("AWS_SESSION_TOKEN"),
    )
