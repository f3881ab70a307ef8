"""What the node plugin has staged and published, kept on disk so a restarted plugin can repair mounts.

One JSON file per staged volume under `<state dir>/volumes/`, and, when the volume has credentials, one
file under `<state dir>/secrets/` readable by root only (mode 0600 in a 0700 directory). The credentials
are stored because recovery must start `pfs mount` again after the plugin itself restarted, when no CSI
request carries them. They are removed on NodeUnstageVolume. Every write is atomic (write, then rename).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass, field


@dataclass
class StagedVolume:
    volume_id: str
    uri: str
    staging_path: str
    options: list[str]
    targets: dict[str, bool] = field(default_factory=dict)  # published target path -> read-only


def _key(volume_id: str) -> str:
    return hashlib.sha256(volume_id.encode()).hexdigest()[:24]


def _write_private(path: str, data: str, mode: int) -> None:
    temporary = f"{path}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


class StateStore:
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self._volumes = os.path.join(self.root, "volumes")
        self._secrets = os.path.join(self.root, "secrets")
        self._logs = os.path.join(self.root, "logs")
        for directory in (self._volumes, self._secrets, self._logs):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(self._secrets, 0o700)
        self._mutex = threading.Lock()  # read-modify-write of one volume's targets from parallel publishes

    def log_file(self, volume_id: str) -> str:
        return os.path.join(self._logs, f"{_key(volume_id)}.log")

    def get(self, volume_id: str) -> StagedVolume | None:
        try:
            with open(os.path.join(self._volumes, f"{_key(volume_id)}.json")) as f:
                return StagedVolume(**json.load(f))
        except FileNotFoundError:
            return None

    def all(self) -> list[StagedVolume]:
        volumes = []
        for name in sorted(os.listdir(self._volumes)):
            if name.endswith(".json"):
                with open(os.path.join(self._volumes, name)) as f:
                    volumes.append(StagedVolume(**json.load(f)))
        return volumes

    def save(self, volume: StagedVolume) -> None:
        with self._mutex:
            self._save(volume)

    def _save(self, volume: StagedVolume) -> None:
        path = os.path.join(self._volumes, f"{_key(volume.volume_id)}.json")
        _write_private(path, json.dumps(asdict(volume), indent=1), 0o600)

    def set_target(self, volume_id: str, target: str, read_only: bool | None) -> None:
        """Record a published target (read_only None: forget it)."""
        with self._mutex:
            volume = self.get(volume_id)
            if volume is None:
                return
            if read_only is None:
                volume.targets.pop(target, None)
            else:
                volume.targets[target] = read_only
            self._save(volume)

    def remove(self, volume_id: str) -> None:
        with self._mutex:
            _remove(os.path.join(self._volumes, f"{_key(volume_id)}.json"))
            _remove(os.path.join(self._secrets, f"{_key(volume_id)}.json"))

    def save_secrets(self, volume_id: str, env: dict[str, str]) -> None:
        path = os.path.join(self._secrets, f"{_key(volume_id)}.json")
        if env:
            _write_private(path, json.dumps(env), 0o600)
        else:
            _remove(path)

    def secrets(self, volume_id: str) -> dict[str, str]:
        try:
            with open(os.path.join(self._secrets, f"{_key(volume_id)}.json")) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}
