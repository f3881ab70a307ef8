"""Write-back's journal and the stream of a file appended in order, in-process over a real file:// backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from pfs.backends import BackendOptions, open_backend
from pfs.errors import BackendError
from pfs.fs.journal import LABEL, Journal, replay
from pfs.fs.staging import StagedFile

pytestmark = pytest.mark.unit  # in process, no kernel: `pytest -m unit`

MiB = 1 << 20


@pytest.fixture
def backend(tmp_path):
    (tmp_path / "root").mkdir()
    return open_backend(f"file://{tmp_path}/root", BackendOptions())


def journal_of_a_dead_process(staging: str, backend_id: str, entries: dict[str, bytes]) -> None:
    """Entries made by a process that then exited, as a killed daemon leaves them."""
    code = (
        "import json, sys; from pfs.fs.journal import Journal; from pfs.fs.staging import StagedFile\n"
        f"j = Journal({staging!r}, {backend_id!r})\n"
        "for path, data in json.load(sys.stdin).items():\n"
        f"    s = StagedFile({staging!r}, 0, None); s.write(0, bytes.fromhex(data))\n"
        "    entry = j.new_id(); s.persist(j.data_path(entry), j.label(path)); j.sync()\n"
    )
    hexed = json.dumps({path: data.hex() for path, data in entries.items()})
    subprocess.run([sys.executable, "-c", code], input=hexed, text=True, check=True)


def test_replay_uploads_a_dead_mounts_entries_of_this_backend_only(backend, tmp_path):
    staging = str(tmp_path / "staging")
    entries = {"a": b"first", "d/b": os.urandom(3 * MiB), "empty": b""}
    os.makedirs(tmp_path / "root" / "d")
    journal_of_a_dead_process(staging, backend.id, {**entries, "unacked": b"closed, never acknowledged"})
    folder = os.path.join(staging, "journal")
    for name in os.listdir(folder):  # a copy the close did not finish: no label yet
        if b"unacked" in os.getxattr(os.path.join(folder, name), LABEL):
            os.removexattr(os.path.join(folder, name), LABEL)
    journal_of_a_dead_process(staging, "s3://elsewhere/bucket", {"other": b"not ours"})
    live = Journal(staging, backend.id)  # this process's own entry: its owner lives
    mine = StagedFile(staging, 0, None)
    mine.write(0, b"live")
    mine.persist(live.data_path(live.new_id()), live.label("live"))
    done = replay(staging, backend)
    assert (done.files, done.failed) == (3, 0)
    for path, data in entries.items():
        assert (tmp_path / "root" / path).read_bytes() == data
    assert not (tmp_path / "root" / "other").exists()
    assert not (tmp_path / "root" / "live").exists()
    assert not (tmp_path / "root" / "unacked").exists()
    left = os.listdir(folder)
    assert len(left) == 2  # the other backend's entry and the live one
    assert replay(staging, backend).files == 0


def test_persist_follows_later_writes_through_the_link(tmp_path):
    staged = StagedFile(str(tmp_path), 0, None)
    staged.write(0, b"one")
    label = ("user.test", b"x")
    assert staged.persist(str(tmp_path / "entry"), label)
    staged.write(3, b" two")
    assert not staged.persist(str(tmp_path / "entry"), label)
    assert (tmp_path / "entry").read_bytes() == b"one two"


def test_the_stream_waits_for_the_writer_and_ends_at_finish(tmp_path):
    staged = StagedFile(str(tmp_path), 0, None)
    source = staged.stream()
    assert source is not None
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(iter(lambda: source.read(MiB), b"")))
    reader.start()
    data = os.urandom(5 * MiB + 3)
    for i in range(0, len(data), 64 << 10):
        staged.write(i, data[i : i + (64 << 10)])
    assert staged.finish()
    reader.join(10)
    assert b"".join(got) == data


def test_the_stream_fails_once_a_write_lands_before_the_end(tmp_path):
    staged = StagedFile(str(tmp_path), 0, None)
    source = staged.stream()
    assert source is not None
    staged.write(0, b"x" * MiB)
    assert source.read(MiB) == b"x" * MiB
    staged.write(0, b"y")
    with pytest.raises(BackendError):
        source.read(MiB)
    assert not staged.finish()
    assert staged.stream() is None
