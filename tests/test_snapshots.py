"""Snapshots on a real S3 server and on file://: the commands, mounts that pin the old tree, and reads that
refuse changed objects."""

from __future__ import annotations

import errno
import json
import os
import time

import pytest

from pfs.backends import open_backend
from pfs.errors import BackendError, ReadOnly, Stale
from pfs.fs.ahead import FOLLOW_AFTER
from pfs.mount import control
from pfs.snapshots.backend import SnapshotBackend
from pfs.snapshots.manifest import Manifest, Row, SnapshotInfo, encode, mtime_token
from tests.conftest import BackendCase, unique
from tests.mounting import Mount, run_pfs
from tests.test_cli import assert_one_line_error
from testservers.s3 import start_s3_server

OLD_TREE = {
    "keep.txt": b"kept as it was",
    "gone.txt": b"deleted after the snapshot",
    "same-size.bin": b"A" * 4096,
    "resized.txt": b"short",
    "dir/sub/deep.txt": b"deep",
}


@pytest.fixture
def case(backend_case: BackendCase) -> BackendCase:
    sub = backend_case.subcase(unique("snap"))
    for rel, data in OLD_TREE.items():
        sub.raw.put(rel, data)
    return sub


def pfs(case: BackendCase, *args: str):
    return run_pfs(*args, env=case.env)


def ok(case: BackendCase, *args: str) -> str:
    result = pfs(case, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def change_backend(case: BackendCase) -> None:
    """Add, delete, rewrite in place (same size, other bytes) and resize, behind the snapshot's back."""
    time.sleep(0.01)  # a new mtime even on a coarse clock
    case.raw.put("new.txt", b"added later")
    case.raw.put("same-size.bin", b"B" * 4096)
    case.raw.put("resized.txt", b"much longer now")
    case.raw.delete("gone.txt")


def test_create_list_show_diff_delete(case):
    out = ok(case, "snapshot", "create", case.uri, "v1")
    assert "'v1'" in out and "7 entries" in out  # 5 files and the directories dir, dir/sub
    assert ok(case, "snapshot", "list", case.uri).split() == ["v1"]
    info = json.loads(ok(case, "snapshot", "show", case.uri, "v1", "--json"))
    assert (info["name"], info["entries"], info["files"]) == ("v1", 7, 5)
    assert info["bytes"] == sum(len(d) for d in OLD_TREE.values())
    assert "created" in ok(case, "snapshot", "show", case.uri, "v1")

    change_backend(case)
    ok(case, "snapshot", "create", case.uri, "v2", "--exclude", "*.tmp")
    assert ok(case, "snapshot", "list", case.uri, "--json") == '["v1", "v2"]\n'
    changes = json.loads(ok(case, "snapshot", "diff", case.uri, "v1", "v2", "--json"))
    assert changes == {
        "added": ["new.txt"],
        "removed": ["gone.txt"],
        "changed": ["resized.txt", "same-size.bin"],
    }
    assert ok(case, "snapshot", "diff", case.uri, "v1", "v2").startswith("1 added, 1 removed, 2 changed")

    assert_one_line_error(pfs(case, "snapshot", "create", case.uri, "v1"), "'v1' already exists")
    ok(case, "snapshot", "delete", case.uri, "v1")
    assert ok(case, "snapshot", "list", case.uri).split() == ["v2"]
    assert_one_line_error(pfs(case, "snapshot", "delete", case.uri, "v1"), "no snapshot 'v1' in")


def test_snapshot_mount_shows_the_old_tree_and_refuses_changed_objects(case, tmp_path):
    ok(case, "snapshot", "create", case.uri, "pinned")
    change_backend(case)
    with Mount(case.uri, str(tmp_path / "m"), case.env, ("--snapshot", "pinned")) as mount:
        root = mount.path
        assert sorted(os.listdir(root)) == ["dir", "gone.txt", "keep.txt", "resized.txt", "same-size.bin"]
        assert os.listdir(f"{root}/dir/sub") == ["deep.txt"]
        assert os.stat(f"{root}/resized.txt").st_size == len(OLD_TREE["resized.txt"])
        with open(f"{root}/keep.txt", "rb") as f:
            assert f.read() == OLD_TREE["keep.txt"]
        with open(f"{root}/dir/sub/deep.txt", "rb") as f:
            assert f.read() == b"deep"
        for name, code in [
            ("same-size.bin", errno.ESTALE),
            ("resized.txt", errno.ESTALE),
            ("gone.txt", errno.EIO),
        ]:
            with pytest.raises(OSError) as failure, open(f"{root}/{name}", "rb") as f:
                f.read()  # never the new bytes
            assert failure.value.errno == code, name
        for change in (
            lambda: open(f"{root}/keep.txt", "ab"),
            lambda: open(f"{root}/created.txt", "wb"),
            lambda: os.mkdir(f"{root}/newdir"),
            lambda: os.unlink(f"{root}/keep.txt"),
            lambda: os.rename(f"{root}/keep.txt", f"{root}/moved.txt"),
        ):
            with pytest.raises(OSError) as failure:
                change()
            assert failure.value.errno == errno.EROFS
        assert os.statvfs(root).f_flag & os.ST_RDONLY
    log = mount.log()
    assert "kernel no-open mode: on" in log  # the checks fire on first reads, with no OPEN to hook
    for name in ("same-size.bin", "resized.txt", "gone.txt"):
        assert f"snapshot pinned: {name}" in log


def test_mount_option_form_and_missing_snapshot(case, tmp_path):
    ok(case, "snapshot", "create", case.uri, "v1")
    with Mount(case.uri, str(tmp_path / "m"), case.env, ("-o", "snapshot=v1")) as mount:
        assert "keep.txt" in os.listdir(mount.path)
    os.makedirs(tmp_path / "m2")
    result = pfs(case, "mount", case.uri, str(tmp_path / "m2"), "--snapshot", "nope")
    assert_one_line_error(result, "no snapshot 'nope' in", case.uri.partition("?")[0])
    for args in (("show", case.uri, "nope"), ("diff", case.uri, "v1", "nope")):
        assert_one_line_error(pfs(case, "snapshot", *args), "no snapshot 'nope'")


@pytest.mark.parametrize("name", ["..", ".", "a/b", "", ".hidden", "tab\there"])
def test_invalid_names_are_one_line_errors(tmp_path, name):
    result = run_pfs("snapshot", "create", f"file://{tmp_path}", name)
    assert_one_line_error(result, "invalid snapshot name")


def test_without_etags_size_and_mtime_are_verified(case):
    """A manifest of `size:mtime` tokens (what objects older than a few minutes get) still refuses a
    rewritten object, also where a HEAD reports whole seconds and the listing milliseconds."""
    live = open_backend(case.uri, case.options)
    try:
        rows = [
            Row(path, entry, version=mtime_token(entry.size, entry.mtime_ns)) for path, entry in live.walk("")
        ]
        manifest = Manifest.decode(encode(rows, SnapshotInfo("old", "", live.id)))
        view = SnapshotBackend(manifest, live)
        timed: list[str] = []
        view.on_request = lambda op, seconds: timed.append(op)  # a mount's latency histogram
        reader = view.open_reader("keep.txt", len(OLD_TREE["keep.txt"]))
        assert reader.read(0, 100) == OLD_TREE["keep.txt"]
        assert "read" in timed and live.on_request is view.on_request  # the live backend's requests
        assert reader.version == mtime_token(
            len(OLD_TREE["keep.txt"]), manifest.entry(manifest.row("keep.txt")).mtime_ns
        )
        reader.close()
        size = len(OLD_TREE["keep.txt"])
        first = view.read_first("keep.txt", size, 1 << 20)  # one GET where the store can tell the time
        assert first is None or first == (OLD_TREE["keep.txt"], reader.version)
        assert (first is not None) == case.object_store
        time.sleep(1.1)  # into the next second: what S3 can tell apart without an ETag
        case.raw.put("keep.txt", b"KEPT AS IT WAS")
        with pytest.raises(Stale):
            view.open_reader("keep.txt", size)
        if case.object_store:
            with pytest.raises(Stale):
                view.read_first("keep.txt", size, 1 << 20)
        case.raw.put("dir/sub/deep.txt", b"")  # other size
        with pytest.raises(Stale):
            view.open_reader("dir/sub/deep.txt", 4)
        with pytest.raises(ReadOnly):
            view.remove_file("keep.txt")
        if not case.object_store:
            case.raw.delete("gone.txt")
            with pytest.raises(BackendError):
                view.open_reader("gone.txt", len(OLD_TREE["gone.txt"]))
    finally:
        live.close()


def test_a_snapshot_of_an_empty_tree_loads():
    manifest = Manifest.decode(encode([], SnapshotInfo("empty", "", "file:///nowhere")))
    assert len(manifest) == 0 and manifest.children("") == [] and manifest.row("a") is None


def test_snapshot_namespace_needs_no_backend_requests(tmp_path):
    """With the server frozen (any request would hang until the timeout), a snapshot mount still lists
    and stats its whole tree at once: lookup, getattr and readdir never reach the backend."""
    with start_s3_server("rclone", str(tmp_path / "s3")) as server:
        server.create_bucket("frozen")
        fs = server.raw_client()
        for i in range(30):
            with fs.open_output_stream(f"frozen/d{i % 3}/f{i}") as f:
                f.write(b"x" * i)
        uri = server.uri("frozen")
        assert run_pfs("snapshot", "create", uri, "s", env=server.env()).returncode == 0
        args = ("--snapshot", "s", "--timeout", "20")
        with Mount(uri, str(tmp_path / "m"), server.env(), args) as mount:
            server.pause()
            try:
                started = time.monotonic()
                sizes = {}
                for parent, _, names in os.walk(mount.path):
                    for name in names:
                        path = os.path.join(parent, name)
                        sizes[os.path.relpath(path, mount.path)] = os.lstat(path).st_size
                assert time.monotonic() - started < 5
            finally:
                server.resume()
        assert sizes == {f"d{i % 3}/f{i}": i for i in range(30)}


def test_warmup_of_a_snapshot_fills_the_cache_its_mounts_read(case, tmp_path):
    ok(case, "snapshot", "create", case.uri, "warm")
    cache = str(tmp_path / "cache")
    files = {rel: data for rel, data in OLD_TREE.items()}
    shares = [
        ok(case, "warmup", "--snapshot", "warm", "--cache-dir", cache, "--partition", f"{i}/2", case.uri)
        for i in (0, 1)
    ]
    counts = [int(out.split()[2]) for out in shares]
    assert sum(counts) == len(files)
    checked = ok(case, "warmup", "--snapshot", "warm", "--cache-dir", cache, "--check", case.uri)
    assert f"{len(files)} files" in checked and "(100.0%)" in checked
    mount = Mount(case.uri, str(tmp_path / "m"), case.env, ("--snapshot", "warm"), cache_dir=cache)
    with mount:
        for rel, data in files.items():
            with open(f"{mount.path}/{rel}", "rb") as f:
                assert f.read() == data
        stats = control.stats(mount.path)
    assert stats.get("backend_opens", 0) == 0 and stats.get("cache_misses", 0) == 0


def test_warmup_of_a_missing_snapshot_is_one_line(case):
    result = pfs(case, "warmup", "--snapshot", "nope", case.uri)
    assert (
        result.returncode != 0 and "no snapshot 'nope'" in result.stderr and "Traceback" not in result.stderr
    )


def test_a_snapshot_read_in_order_is_fetched_ahead_one_request_per_file(tmp_path):
    """Cold files of a snapshot read in name order: each one's first block comes ahead of its read, in one
    GET checked against the manifest (no reader opened for it), and every byte is the snapshot's."""
    with start_s3_server("rclone", str(tmp_path / "s3")) as server:
        server.create_bucket("dataset")
        fs = server.raw_client()
        files = {f"d/f{i:02d}": bytes([i]) * (1000 + i) for i in range(24)}
        for name, data in files.items():
            with fs.open_output_stream(f"dataset/{name}") as f:
                f.write(data)
        uri = server.uri("dataset")
        assert run_pfs("snapshot", "create", uri, "s", env=server.env()).returncode == 0
        with Mount(uri, str(tmp_path / "m"), server.env(), ("--snapshot", "s")) as mount:
            for name in sorted(os.listdir(f"{mount.path}/d")):
                with open(f"{mount.path}/d/{name}", "rb") as f:
                    assert f.read() == files[f"d/{name}"]
            stats = json.loads(os.getxattr(mount.path, control.STATS))
        assert stats.get("backend_opens", 0) <= FOLLOW_AFTER + 1  # the files read before the order was known
        assert stats["prefetch_files_used"] >= len(files) - FOLLOW_AFTER - 1
        assert stats["backend_first_reads"] <= len(files)
