"""POSIX attributes on an object store survive a remount and reach a second mount: chmod +x, chown,
touch -d, cp -p, mv (which copies the object: a new modification time on S3) and a file's rewrite. An
object rewritten by another tool shows its new state; a dataset without attributes looks as always."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from concurrent.futures import Future

import pyarrow.fs as pafs
import pytest

from pfs.backends import BackendOptions, Meta, MetaChange, open_backend
from pfs.backends.arrow.attrs import AHEAD_ROOM, INDEX, Index, ReadAhead, compile_records
from tests.conftest import s3_case, unique
from tests.mounting import Mount
from testservers.s3 import start_s3_server

TTL = "0.2"  # seconds: a second mount sees changes after this long
DAY = 86_400


@pytest.fixture
def uri(s3_server, s3_bucket) -> str:
    return s3_server.uri(s3_bucket, unique("attrs"))


@pytest.fixture
def mount(s3_server, uri, tmp_path):
    m = Mount(uri, str(tmp_path / "m"), env=s3_server.env(), args=("-o", f"metadata_ttl={TTL}"))
    with m:
        yield m


@pytest.fixture
def second(s3_server, uri, tmp_path):
    m = Mount(uri, str(tmp_path / "m2"), env=s3_server.env(), args=("-o", f"metadata_ttl={TTL}"))
    with m:
        yield m


def write(path: str, data: bytes = b"data") -> None:
    with open(path, "wb") as f:
        f.write(data)


def settle() -> None:
    time.sleep(float(TTL) * 3)


def test_chmod_x_survives_a_remount_and_reaches_a_second_mount(mount, second):
    write(f"{mount.path}/run.sh", b"#!/bin/sh\necho hi\n")
    subprocess.run(["chmod", "+x", f"{mount.path}/run.sh"], check=True)
    settle()
    assert os.stat(f"{second.path}/run.sh").st_mode & 0o777 == 0o755
    mount.remount()
    assert os.stat(f"{mount.path}/run.sh").st_mode & 0o777 == 0o755
    assert subprocess.run([f"{mount.path}/run.sh"], capture_output=True, text=True).stdout == "hi\n"


def test_chown_survives_a_remount(mount, second):
    os.mkdir(f"{mount.path}/d")
    write(f"{mount.path}/d/f")
    os.chown(f"{mount.path}/d/f", 1234, 5678)
    os.chown(f"{mount.path}/d", 4321, 8765)
    mount.remount()
    st = os.stat(f"{mount.path}/d/f")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    st = os.stat(f"{mount.path}/d")
    assert (st.st_uid, st.st_gid) == (4321, 8765)
    settle()
    assert os.stat(f"{second.path}/d/f").st_uid == 1234


def test_touch_d_survives_a_remount(mount, second):
    write(f"{mount.path}/old")
    subprocess.run(["touch", "-d", "2001-02-03 04:05:06 UTC", f"{mount.path}/old"], check=True)
    mount.remount()
    assert os.stat(f"{mount.path}/old").st_mtime == 981173106
    settle()
    assert os.stat(f"{second.path}/old").st_mtime == 981173106


def test_cp_p_keeps_mode_and_time_across_a_remount(mount, tmp_path):
    src = tmp_path / "src"
    src.write_bytes(b"x" * 1000)
    os.chmod(src, 0o750)
    os.utime(src, (1_000_000_000, 1_000_000_000))
    subprocess.run(["cp", "-p", str(src), f"{mount.path}/copy"], check=True)
    mount.remount()
    st = os.stat(f"{mount.path}/copy")
    assert (st.st_mode & 0o777, st.st_mtime, st.st_size) == (0o750, 1_000_000_000, 1000)


def test_cp_p_of_other_bytes_of_the_same_size_and_time_is_read_anew(mount, second, tmp_path):
    for name, data in (("a", b"first"), ("b", b"other")):
        (tmp_path / name).write_bytes(data)
        os.utime(tmp_path / name, (DAY, DAY))
    subprocess.run(["cp", "-p", str(tmp_path / "a"), f"{mount.path}/f"], check=True)
    settle()
    with open(f"{second.path}/f", "rb") as f:
        assert f.read() == b"first"
    time.sleep(2)  # the version first read is trusted by its size and time from now on
    subprocess.run(["cp", "-p", str(tmp_path / "b"), f"{mount.path}/f"], check=True)
    settle()
    assert os.stat(f"{second.path}/f").st_mtime == DAY
    with open(f"{second.path}/f", "rb") as f:
        assert f.read() == b"other"


def test_mv_keeps_the_modification_time(mount, second):
    os.mkdir(f"{mount.path}/a")
    os.mkdir(f"{mount.path}/b")
    write(f"{mount.path}/a/f")
    os.utime(f"{mount.path}/a/f", (1_500_000_000, 1_500_000_000))
    write(f"{mount.path}/a/plain")
    settle()  # the store's own time, as another mount sees it (the writer shows its clock's until then)
    before = os.stat(f"{second.path}/a/plain").st_mtime_ns
    time.sleep(1.1)  # the store's copy would get a later second
    subprocess.run(["mv", f"{mount.path}/a/f", f"{mount.path}/b/f"], check=True)
    subprocess.run(["mv", f"{mount.path}/a/plain", f"{mount.path}/a/moved"], check=True)
    mount.remount()
    assert os.stat(f"{mount.path}/b/f").st_mtime == 1_500_000_000
    assert os.stat(f"{mount.path}/a/moved").st_mtime_ns == before
    assert sorted(os.listdir(f"{mount.path}/a")) == ["moved"]
    settle()
    assert os.stat(f"{second.path}/b/f").st_mtime == 1_500_000_000


def test_mv_of_a_directory_keeps_what_is_inside(mount):
    os.makedirs(f"{mount.path}/tree/sub")
    write(f"{mount.path}/tree/sub/f")
    os.chmod(f"{mount.path}/tree/sub/f", 0o711)
    write(f"{mount.path}/tree/plain")
    mount.remount()  # the store's own time (the writer shows its clock's until its next look)
    before = os.stat(f"{mount.path}/tree/plain").st_mtime_ns
    time.sleep(1.1)
    os.rename(f"{mount.path}/tree", f"{mount.path}/moved")
    mount.remount()
    st = os.stat(f"{mount.path}/moved/sub/f")
    assert st.st_mode & 0o777 == 0o711
    assert os.stat(f"{mount.path}/moved/plain").st_mtime_ns == before
    assert sorted(os.listdir(f"{mount.path}/moved")) == ["plain", "sub"]


def test_a_rewrite_keeps_mode_and_owner(mount):
    write(f"{mount.path}/f", b"one")
    os.chmod(f"{mount.path}/f", 0o700)
    os.chown(f"{mount.path}/f", 42, 43)
    write(f"{mount.path}/f", b"two, longer")
    mount.remount()
    st = os.stat(f"{mount.path}/f")
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid, st.st_size) == (0o700, 42, 43, 11)


def test_a_new_file_and_directory_keep_their_mode(mount):
    os.mkdir(f"{mount.path}/private", 0o700)
    fd = os.open(f"{mount.path}/private/key", os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, b"secret")
    os.close(fd)
    mount.remount()
    assert os.stat(f"{mount.path}/private").st_mode & 0o777 == 0o700
    assert os.stat(f"{mount.path}/private/key").st_mode & 0o777 == 0o600


def test_what_another_user_makes_is_theirs(s3_server, uri, tmp_path):
    args = ("-o", f"metadata_ttl={TTL},allow_other")
    with Mount(uri, str(tmp_path / "m"), env=s3_server.env(), args=args) as m:
        os.chmod(m.path, 0o777)
        script = "mkdir d && echo x > d/f && ln -s f d/l"
        subprocess.run(
            ["/bin/sh", "-c", script], cwd=m.path, check=True, user=4321, group=8765, extra_groups=[]
        )
        m.remount()
        for name in ("d", "d/f", "d/l"):
            st = os.lstat(f"{m.path}/{name}")
            assert (st.st_uid, st.st_gid) == (4321, 8765), name


def test_an_object_rewritten_by_another_tool_shows_its_new_state(mount, s3_server, uri):
    write(f"{mount.path}/f", b"ours")
    os.chmod(f"{mount.path}/f", 0o751)
    os.utime(f"{mount.path}/f", (DAY, DAY))
    mount.stop()
    time.sleep(1.1)  # another second: the new object's stamp differs even at the same size
    fs, root = pafs.FileSystem.from_uri(uri.replace("s3://", "s3://{}:{}@".format(*_keys(s3_server)), 1))
    fs.delete_file(f"{root}/f")  # as a tool that deletes, then writes
    with fs.open_output_stream(f"{root}/f") as out:
        out.write(b"them")
    mount.start()
    st = os.stat(f"{mount.path}/f")
    assert st.st_mode & 0o777 == 0o644 and st.st_mtime > DAY
    with open(f"{mount.path}/f", "rb") as f:
        assert f.read() == b"them"


def test_the_index_is_hidden_and_reserved(mount):
    write(f"{mount.path}/f")
    os.chmod(f"{mount.path}/f", 0o600)
    assert os.listdir(mount.path) == ["f"]
    with pytest.raises(FileNotFoundError):
        os.stat(f"{mount.path}/{INDEX}")
    with pytest.raises(PermissionError):
        write(f"{mount.path}/{INDEX}")


def _keys(server) -> tuple[str, str]:
    return server.access_key, server.secret_key


# ---- the backend alone, on every store that keeps an index (object stores, HDFS) ----------------------


@pytest.fixture
def case(backend_case):
    if backend_case.name == "file":
        pytest.skip("file:// keeps attributes on its files, not in an index")
    return backend_case.subcase(unique())


@pytest.fixture
def b(case):
    backend = open_backend(case.uri, case.options)
    yield backend
    backend.close()


def put(b, path: str, data: bytes = b"abc", meta: Meta | None = None):
    return b.write_file(path, io.BytesIO(data), len(data), meta=meta)


def test_a_dataset_without_attributes_lists_as_before(b):
    b.make_dir("d")
    put(b, "d/f")
    [entry] = b.list_dir("d")
    assert entry.meta is None and b.stat("d/f").meta is None
    assert b.stored_meta == {"mode", "uid", "gid", "mtime_ns"}


def test_set_meta_list_stat_walk_and_rename(b):
    b.make_dir("d")
    put(b, "d/f")
    entry = b.set_meta("d/f", MetaChange(mode=0o4755, uid=7, gid=8, mtime_ns=DAY * 10**9))
    assert (entry.meta.mode, entry.meta.uid, entry.meta.gid, entry.meta.mtime_ns) == (
        0o4755,
        7,
        8,
        DAY * 10**9,
    )
    b.set_meta("d", MetaChange(mode=0o700))
    assert b.list_dir("d") == [entry] and b.stat("d/f") == entry
    assert b.stat("d").meta.mode == 0o700 and b.list_dir("")[0].meta.mode == 0o700
    assert dict(b.walk(""))["d/f"] == entry
    b.rename("d", "e")
    b.rename("e/f", "e/g")
    moved = b.stat("e/g")
    assert (moved.meta.mode, moved.meta.mtime_ns) == (0o4755, DAY * 10**9)
    assert b.stat("e").meta.mode == 0o700
    assert [e.name for e in b.list_dir("e")] == ["g"]


def test_removing_a_name_drops_its_record(b):
    put(b, "f", meta=Meta(mode=0o700, mtime_ns=7 * 10**9))
    entry = b.stat("f")
    assert (entry.meta.mode, entry.meta.mtime_ns) == (0o700, 7 * 10**9)
    b.remove_file("f")
    put(b, "f")  # the same name again: a new file, no attributes
    assert b.stat("f").meta is None
    assert [e.name for e in b.list_dir("")] == ["f"]


def test_changes_of_two_backends_merge(b, case):
    put(b, "a")
    put(b, "b")
    other = open_backend(case.uri, case.options)
    try:
        b.set_meta("a", MetaChange(mode=0o700))
        other.set_meta("b", MetaChange(mode=0o711))
    finally:
        other.close()
    assert {e.name: e.meta.mode for e in b.list_dir("")} == {"a": 0o700, "b": 0o711}


def _put_index(b, directory: str, doc: dict) -> None:
    """An index object written as another program (or an earlier pfs) would."""
    data = json.dumps(doc).encode()
    with b._fs.open_output_stream(b._index_key(directory)) as f:
        f.write(data)
    b._attrs.forget(directory)


def test_a_version_1_index_is_read_and_rewritten_as_version_2_keeping_its_records(b):
    put(b, "f")
    put(b, "g")
    stamp = [3, b._fs.get_file_info(b._full("f")).mtime_ns // 10**9]
    _put_index(b, "", {"version": 1, "entries": {"f": {"mode": 0o700, "uid": 5, "stamp": stamp, "t": 1}}})
    assert b.stat("f").meta.mode == 0o700 and b.list_dir("")[0].meta.uid == 5
    b.set_meta("g", MetaChange(mode=0o711))
    with b._fs.open_input_stream(b._index_key("")) as f:
        doc = json.loads(f.read())
    assert doc["version"] == 2 and doc["names"] == ["f", "g"] and doc["mode"] == [0o700, 0o711]
    assert {e.name: e.meta.mode for e in b.list_dir("")} == {"f": 0o700, "g": 0o711}


def test_an_index_with_values_that_are_not_attributes_shows_nothing_for_them(b):
    put(b, "ok")
    put(b, "bad")
    second = b._fs.get_file_info(b._full("ok")).mtime_ns // 10**9
    doc = {
        "version": 2,
        "names": ["ok", "bad"],
        "mode": [0o640, "rwx"],
        "size": [3, 3],
        "second": [second, second],
    }
    _put_index(b, "", doc)
    shown = {e.name: e.meta for e in b.list_dir("")}
    assert shown["ok"].mode == 0o640 and shown["bad"] is None
    _put_index(b, "", {"version": 2, "names": ["ok"], "mode": []})  # columns of the wrong length
    assert [e.meta for e in b.list_dir("")] == [None, None]


class _NoStreams:
    """A filesystem whose streamed reads fail: shows that an index was read some other way."""

    def __init__(self, fs: pafs.FileSystem) -> None:
        self._fs = fs

    def open_input_stream(self, *args, **kwargs):
        raise AssertionError("the index was streamed (HEAD + GET) although its size was listed")

    def __getattr__(self, name: str):
        return getattr(self._fs, name)


@pytest.fixture
def s3(request):
    """An S3 backend case of its own: reading an index in one signed GET is an object-store path."""
    return s3_case(request).subcase(unique())


def test_a_listed_index_is_read_in_one_get(s3):
    b = open_backend(s3.uri, s3.options)
    put(b, "f", meta=Meta(mode=0o700))
    b.close()
    other = open_backend(s3.uri, s3.options)
    try:
        other._attrs._fs = _NoStreams(other._attrs._fs)
        [entry] = other.list_dir("")
        assert entry.meta.mode == 0o700
    finally:
        other.close()


def test_an_index_longer_than_listed_is_read_whole(s3):
    b = open_backend(s3.uri, s3.options)
    big = {f"n{i}": {"mode": 0o644, "t": i} for i in range(5000)}  # well over 64 KiB of JSON
    b._attrs._write("", big)
    key = b._index_key("")
    assert b._read_whole(key, 10) is None  # longer than the room asked for: the caller streams it
    assert b._attrs._read("", 10).records() == big
    whole = b._read_whole(key, 300_000)
    assert whole is not None and len(whole.data) > 64 * 1024 and whole.modified_s is not None
    b.close()


def _rooms_asked(b) -> list[int]:
    """The room of every one-GET read of an index by `b` from now on."""
    asked: list[int] = []
    read_whole = b._attrs._read_whole

    def counted(key: str, room: int):
        asked.append(room)
        return read_whole(key, room)

    b._attrs._read_whole = counted
    return asked


def test_a_directory_its_parent_describes_has_its_index_read_beside_its_listing(s3):
    b = open_backend(s3.uri, s3.options)
    b.make_dir("d")
    b.set_meta("d", MetaChange(mode=0o750))
    put(b, "d/f", meta=Meta(mode=0o700))
    b.make_dir("plain")
    put(b, "plain/f")
    b.close()
    other = open_backend(s3.uri, s3.options)
    try:
        other.list_dir("")  # the root's index describes d, not plain
        asked = _rooms_asked(other)
        [entry] = other.list_dir("d")
        assert entry.meta.mode == 0o700
        assert asked == [AHEAD_ROOM]  # the read begun beside the listing was used: no second read
        [entry] = other.list_dir("plain")
        assert entry.meta is None and asked == [AHEAD_ROOM]  # never read ahead: no index is expected
    finally:
        other.close()


def test_a_walker_finds_the_next_directory_s_index_read_while_it_listed_the_one_before(s3):
    b = open_backend(s3.uri, s3.options)
    for name in ("d1", "d2", "d3"):
        b.make_dir(name)
        b.set_meta(name, MetaChange(mode=0o750))
        put(b, f"{name}/f", meta=Meta(mode=0o700))
    b.close()
    other = open_backend(s3.uri, s3.options)
    try:
        other.list_dir("")
        asked = _rooms_asked(other)
        for name, pending in (("d1", {"d2"}), ("d2", {"d3"}), ("d3", set())):
            assert [e.meta.mode for e in other.list_dir(name)] == [0o700]
            assert set(other._attrs._next) == pending  # the next one is being read
        # Each index read once, ahead (d2's while d1 was listed, d3's while d2 was): no read after a listing.
        assert asked == [AHEAD_ROOM] * 3
    finally:
        other.close()


def test_an_index_read_ahead_is_used_only_if_it_is_the_object_listed(s3):
    b = open_backend(s3.uri, s3.options)
    put(b, "f", meta=Meta(mode=0o700))
    info = b._fs.get_file_info(b._index_key(""))
    old = b._read_whole(b._index_key(""), AHEAD_ROOM)
    b.close()
    other = open_backend(s3.uri, s3.options)
    try:
        listed = other._attrs.listed
        stale = Future()  # what a GET answered just before another mount rewrote it, same size
        changed = {"f": {**other._attrs._read("").records()["f"], "mode": 0o666}}
        stale.set_result(ReadAhead(len(old.data), old.modified_s - 1, Index(compile_records(changed))))
        assert listed("", info, stale)["f"][0].mode == 0o700  # not the object listed: read again
        other._attrs.forget("")
        same = Future()
        same.set_result(ReadAhead(len(old.data), old.modified_s, Index(compile_records(changed))))
        assert listed("", info, same)["f"][0].mode == 0o666  # the very object listed: used as it is
    finally:
        other.close()


def test_a_listing_time_the_client_cannot_read_keeps_the_attributes(tmp_path):
    """`rclone serve s3` lists a time of .730 s as ".73Z", which the AWS SDK reads as 0: the attributes of
    such an object must still apply (by its size), in listings and stats, across backends."""
    bucket = tmp_path / "s3" / "data" / "times"
    bucket.mkdir(parents=True)
    (bucket / "f").write_bytes(b"abc")
    os.utime(bucket / "f", ns=(1_700_000_000_730_000_000,) * 2)
    with start_s3_server("rclone", str(tmp_path / "s3")) as server:
        options = BackendOptions(access_key=server.access_key, secret_key=server.secret_key)
        b = open_backend(server.uri("times"), options)
        try:
            [listed] = b.list_dir("")
            assert listed.mtime_ns == 0  # what this test is about: the listing's time was not read
            b.set_meta("f", MetaChange(mode=0o751))
        finally:
            b.close()
        other = open_backend(server.uri("times"), options)
        try:
            assert [e.meta.mode for e in other.list_dir("")] == [0o751]
            assert other.stat("f").meta.mode == 0o751
        finally:
            other.close()
