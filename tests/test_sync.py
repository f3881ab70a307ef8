"""`pfs sync` between local directories and a real S3 server: round trips, resuming, --delete, --dry-run,
--exclude, --checksum and per-file failures."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from pfs.backends import BackendOptions, open_backend
from pfs.datasets.sync import SyncOptions, execute, plan
from pfs.errors import NotFound
from tests.conftest import BackendCase, unique
from tests.mounting import run_pfs, wait_until
from tests.test_cli import assert_one_line_error


def make_tree(root, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


def read_tree(root) -> dict[str, bytes]:
    found = {}
    for parent, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not (parent == str(root) and d == ".pfs")]
        for name in names:
            path = os.path.join(parent, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = f.read()
    return found


def sample_tree(seed: int = 1) -> dict[str, bytes]:
    rng = random.Random(seed)
    files = {
        f"imgs/{c}/{i:03d}.jpg": rng.randbytes(rng.randrange(0, 70_000)) for c in "abc" for i in range(20)
    }
    files["shards/big.bin"] = rng.randbytes(9 << 20)  # more than one 8 MiB chunk: a multipart upload
    files["README"] = b"a dataset\n"
    return files


def sync(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_pfs("sync", *map(str, args), env=env)


def summary(result: subprocess.CompletedProcess) -> str:
    lines = (result.stdout + result.stderr).splitlines()
    return next(line for line in lines if line.startswith("pfs: sync: copied"))


@pytest.fixture
def s3(s3_server, s3_bucket) -> BackendCase:
    prefix = unique("sync")
    options = BackendOptions(access_key=s3_server.access_key, secret_key=s3_server.secret_key)
    return BackendCase(
        "s3", s3_server.uri(s3_bucket, prefix), options, env=s3_server.env(), object_store=True
    )


def test_round_trip_through_s3_is_byte_identical(tmp_path, s3):
    files = sample_tree()
    make_tree(tmp_path / "src", files)
    up = sync(tmp_path / "src", s3.uri, env=s3.env)
    assert up.returncode == 0, up.stderr
    assert summary(up).startswith(f"pfs: sync: copied {len(files)} ")
    down = sync(s3.uri, tmp_path / "back", env=s3.env)  # a local destination is created
    assert down.returncode == 0, down.stderr
    assert read_tree(tmp_path / "back") == files
    again = sync(tmp_path / "src", s3.uri, env=s3.env)
    assert f"copied 0 (0 B), {len(files)} unchanged" in summary(again)


SETTLE_S = 3.0


def test_resumes_after_being_killed(tmp_path, s3):
    rng = random.Random(2)
    files = {f"part-{i:04d}": rng.randbytes(256 << 10) for i in range(400)}
    make_tree(tmp_path / "src", files)
    process = subprocess.Popen(
        [sys.executable, "-m", "pfs", "sync", str(tmp_path / "src"), s3.uri, "--threads", "2"],
        env={**os.environ, **s3.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    live = open_backend(s3.uri, s3.options)
    try:
        assert wait_until(lambda: len(live.list_dir("")) >= 20, timeout=60)
        process.send_signal(signal.SIGKILL)
        process.wait()
        # A PUT whose body reached the server before the kill may still land, and SeaweedFS shows a stored
        # object up to a second later: wait until nothing has changed for SETTLE_S.
        present: dict[str, int] = {}
        settled_at = time.monotonic()
        while time.monotonic() - settled_at < SETTLE_S:
            if (listed := {e.name: e.size for e in live.list_dir("")}) != present:
                present, settled_at = listed, time.monotonic()
            time.sleep(0.25)
        assert 20 <= len(present) < len(files), "killed midway"
        for name in present:  # what is there is whole: never a partial object
            reader = live.open_reader(name, present[name])
            assert reader.read(0, 1 << 20) == files[name]
            reader.close()
    finally:
        live.close()
        if process.poll() is None:
            process.kill()
    resumed = sync(tmp_path / "src", s3.uri, env=s3.env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"copied {len(files) - len(present)} " in summary(resumed)
    assert f"{len(present)} unchanged" in summary(resumed)
    sync(s3.uri, tmp_path / "back", env=s3.env)
    assert read_tree(tmp_path / "back") == files


def test_delete_dry_run_and_exclude(tmp_path, backend_case):
    dst = backend_case.subcase(unique("dst"))
    make_tree(tmp_path / "src", {"a/1": b"one", "a/2": b"two", "skip.tmp": b"never"})
    assert sync(tmp_path / "src", dst.uri, "--exclude", "*.tmp", env=dst.env).returncode == 0
    assert not dst.raw.exists("skip.tmp")
    dst.raw.put("extra/x", b"only at the destination")
    dst.raw.put("keep.tmp", b"excluded, so never deleted")
    os.remove(tmp_path / "src/a/2")
    make_tree(tmp_path / "src", {"a/3": b"three"})

    dry = sync(tmp_path / "src", dst.uri, "--delete", "--dry-run", "--exclude", "*.tmp", env=dst.env)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert "copy a/3" in lines and "delete a/2" in lines and "delete extra/x" in lines
    assert "delete keep.tmp" not in lines
    assert lines[-1].startswith("pfs: sync (dry run): would copy 1 ")
    assert dst.raw.exists("a/2") and not dst.raw.exists("a/3")  # nothing changed

    real = sync(tmp_path / "src", dst.uri, "--delete", "--exclude", "*.tmp", env=dst.env)
    assert real.returncode == 0, real.stderr
    assert "copied 1 " in summary(real) and "3 deleted" in summary(real)  # a/2, extra/x, extra
    assert dst.raw.get("a/3") == b"three" and dst.raw.get("a/1") == b"one"
    assert not dst.raw.exists("a/2") and not dst.raw.exists("extra/x")
    assert dst.raw.exists("keep.tmp")


def test_a_new_tree_is_copied_whole_while_its_directories_are_made_at_once(tmp_path, backend_case):
    """Files of one new directory copied by several threads: each may find the directory missing and make
    it (HDFS's rename then refuses for a moment a directory another thread is making)."""
    files = {f"d{i % 8}/f{i}": bytes([i]) * 10 for i in range(64)}
    make_tree(tmp_path / "src", files)
    dst_case = backend_case.subcase(unique("dst"))
    src = open_backend(f"file://{tmp_path}/src", BackendOptions())
    dst = open_backend(dst_case.uri, dst_case.options)
    try:
        options = SyncOptions(threads=16)
        outcome = execute(src, dst, plan(src, dst, options), options)
        assert (outcome.failures, outcome.copied) == ([], len(files))
    finally:
        src.close()
        dst.close()
    assert all(dst_case.raw.get(path) == data for path, data in files.items())


def test_checksum_finds_same_size_changes(tmp_path):
    make_tree(tmp_path / "src", {"f": b"old bytes"})
    assert sync(tmp_path / "src", tmp_path / "dst").returncode == 0
    make_tree(tmp_path / "dst", {"f": b"new bytes"})  # same size, newer: looks unchanged by size and mtime
    assert "0 failed" in summary(sync(tmp_path / "src", tmp_path / "dst"))
    assert (tmp_path / "dst/f").read_bytes() == b"new bytes"
    result = sync(tmp_path / "src", tmp_path / "dst", "--checksum")
    assert "copied 1 " in summary(result)
    assert (tmp_path / "dst/f").read_bytes() == b"old bytes"


def test_permission_errors_do_not_stop_other_files(tmp_path):
    make_tree(tmp_path / "src", {"ok/1": b"1", "ok/2": b"2", "locked/a": b"a", "locked/b": b"b"})
    os.makedirs(tmp_path / "dst/locked")
    subprocess.run(["chattr", "+i", str(tmp_path / "dst/locked")], check=True)  # refused even to root
    try:
        result = sync(tmp_path / "src", tmp_path / "dst")
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path / "dst/locked")], check=True)
    assert result.returncode == 1
    assert "locked/a: " in result.stderr and "locked/b: " in result.stderr
    assert "copied 2 " in summary(result) and "2 failed" in summary(result)
    assert result.stderr.strip().splitlines()[-1].startswith("pfs: error: 2 of the files could not be synced")
    assert read_tree(tmp_path / "dst") == {"ok/1": b"1", "ok/2": b"2"}


def test_files_gone_since_the_listing_are_reported_and_others_copied(tmp_path, s3):
    make_tree(tmp_path / "src", {f"f{i}": bytes([i]) * 100 for i in range(10)})
    src = open_backend(f"file://{tmp_path}/src", BackendOptions())
    dst = open_backend(s3.uri, s3.options)
    try:
        options = SyncOptions(threads=4)
        work = plan(src, dst, options)
        os.remove(tmp_path / "src/f3")
        outcome = execute(src, dst, work, options)
        assert [path for path, _ in outcome.failures] == ["f3"]
        assert outcome.copied == 9
        with pytest.raises(NotFound):
            dst.stat("f3")
    finally:
        src.close()
        dst.close()


def test_bad_source_is_a_one_line_error(tmp_path):
    assert_one_line_error(sync(tmp_path / "missing", tmp_path / "dst"), "missing")


def test_a_file_replaces_a_symlink_and_links_are_copied(tmp_path):
    make_tree(tmp_path / "src", {"x": b"a file now", "dir/link.rclonelink": b"../x"})  # pfs's symlink form
    make_tree(tmp_path / "dst", {"x.rclonelink": b"somewhere"})  # the destination has a symlink named x
    result = sync(tmp_path / "src", tmp_path / "dst")
    assert result.returncode == 0, result.stderr
    assert read_tree(tmp_path / "dst") == {"x": b"a file now", "dir/link.rclonelink": b"../x"}


def test_a_destination_inside_the_source_or_around_it_is_refused(tmp_path, s3):
    make_tree(tmp_path / "src", {"a": b"1", "sub/b": b"2"})
    os.symlink(tmp_path / "src", tmp_path / "alias")
    for src, dst in [
        (tmp_path / "src", tmp_path / "src" / "copy"),
        (tmp_path / "src", tmp_path / "src"),
        (tmp_path / "src" / "sub", tmp_path / "src"),
        (tmp_path / "alias", tmp_path / "src" / "copy"),
        (f"file://{tmp_path}/src/", f"file://{tmp_path}/src/sub/x"),
        (s3.uri.replace("?", "/data?"), s3.uri.replace("?", "/data/copy?")),
        (s3.uri.replace("?", "/data/x?"), s3.uri),
    ]:
        result = sync(src, dst, env=s3.env)
        assert_one_line_error(result, "the source")
        assert result.returncode == 2
    assert read_tree(tmp_path / "src") == {"a": b"1", "sub/b": b"2"}  # nothing copied into itself
    assert sync(tmp_path / "src", tmp_path / "srcs-copy").returncode == 0  # a shared name prefix is fine
