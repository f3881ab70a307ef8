"""The POSIX behaviour suite: written once, run through a real FUSE mount on every backend that runs here."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
import time
import uuid

import pytest

from tests.mounting import Mount, wait_until

MiB = 1 << 20
# Changes made by another client are seen within the metadata TTL; a short one keeps these tests quick.
SHORT_TTL = ("-o", "metadata_ttl=1")


@pytest.fixture(scope="module")
def mnt(backend_case, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("mnt") / "m")
    mount = Mount(backend_case.uri, path, env=backend_case.env, args=SHORT_TTL)
    with mount:
        yield mount


@pytest.fixture
def d(mnt):
    """A fresh directory inside the mount for one test."""
    path = os.path.join(mnt.path, "t-" + uuid.uuid4().hex[:8])
    os.mkdir(path)
    return path


def write(path: str, data: bytes, mode: str = "wb") -> None:
    with open(path, mode) as f:
        f.write(data)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_create_and_read_back(d):
    write(f"{d}/a.bin", b"hello pfs")
    assert read(f"{d}/a.bin") == b"hello pfs"
    assert os.stat(f"{d}/a.bin").st_size == 9
    assert stat.S_ISREG(os.stat(f"{d}/a.bin").st_mode)


def test_empty_file_is_created(d):
    open(f"{d}/empty", "wb").close()
    assert os.listdir(d) == ["empty"]
    assert os.stat(f"{d}/empty").st_size == 0


def test_overwrite_with_shorter_content(d):
    write(f"{d}/f", b"a" * 1000)
    write(f"{d}/f", b"short")
    assert read(f"{d}/f") == b"short"


def test_append(d):
    write(f"{d}/log", b"line 1\n")
    write(f"{d}/log", b"line 2\n", mode="ab")
    assert read(f"{d}/log") == b"line 1\nline 2\n"


def test_write_in_the_middle_keeps_the_rest(d):
    write(f"{d}/f", bytes(range(256)) * 64)
    with open(f"{d}/f", "r+b") as f:
        f.seek(1000)
        f.write(b"XYZ")
    expected = bytearray(bytes(range(256)) * 64)
    expected[1000:1003] = b"XYZ"
    assert read(f"{d}/f") == bytes(expected)


def test_truncate_shrinks_and_extends_with_zeros(d):
    write(f"{d}/f", b"0123456789")
    os.truncate(f"{d}/f", 4)
    assert read(f"{d}/f") == b"0123"
    os.truncate(f"{d}/f", 8)
    assert read(f"{d}/f") == b"0123\0\0\0\0"
    with open(f"{d}/f", "r+b") as f:
        f.truncate(2)
    assert read(f"{d}/f") == b"01"


def test_a_size_the_backend_cannot_take_is_efbig_and_changes_nothing(d):
    """pfs uploads a file whole, holes as zeros: a petabyte-sized truncate or a write far past the end would
    fill the store (or the node's disk) before failing."""
    write(f"{d}/f", b"0123456789")
    with pytest.raises(OSError) as refused:
        os.truncate(f"{d}/f", 999_999_999_999_999)
    assert refused.value.errno == errno.EFBIG
    fd = os.open(f"{d}/f", os.O_WRONLY)
    try:
        with pytest.raises(OSError) as refused:
            os.pwrite(fd, b"x", 999_999_999_999_999)
        assert refused.value.errno == errno.EFBIG
    finally:
        os.close(fd)
    assert read(f"{d}/f") == b"0123456789"


def test_read_your_writes_before_close(d):
    with open(f"{d}/f", "w+b") as f:
        f.write(b"abc")
        f.flush()
        f.seek(0)
        assert f.read() == b"abc"
        assert os.stat(f"{d}/f").st_size == 3


def test_rename_file(d):
    write(f"{d}/old", b"x")
    os.rename(f"{d}/old", f"{d}/new")
    assert os.listdir(d) == ["new"]
    assert read(f"{d}/new") == b"x"


def test_rename_replaces_existing_file(d):
    write(f"{d}/a", b"a")
    write(f"{d}/b", b"b")
    os.rename(f"{d}/a", f"{d}/b")
    assert os.listdir(d) == ["b"]
    assert read(f"{d}/b") == b"a"


def test_rename_directory_tree(d):
    os.makedirs(f"{d}/src/sub")
    write(f"{d}/src/f", b"1")
    write(f"{d}/src/sub/g", b"2")
    os.rename(f"{d}/src", f"{d}/dst")
    assert os.listdir(d) == ["dst"]
    assert read(f"{d}/dst/sub/g") == b"2"
    assert sorted(os.listdir(f"{d}/dst")) == ["f", "sub"]


def test_rename_file_onto_directory_fails(d):
    write(f"{d}/f", b"1")
    os.mkdir(f"{d}/dir")
    with pytest.raises(IsADirectoryError):
        os.rename(f"{d}/f", f"{d}/dir")


def test_unlink(d):
    write(f"{d}/f", b"1")
    os.unlink(f"{d}/f")
    assert os.listdir(d) == []
    with pytest.raises(FileNotFoundError):
        os.stat(f"{d}/f")


def test_unlinked_open_file_stays_readable_until_closed(d):
    data = os.urandom(3 * MiB)
    write(f"{d}/f", data)
    with open(f"{d}/f", "rb") as f:
        head = f.read(MiB)
        os.unlink(f"{d}/f")
        assert os.listdir(d) == []
        assert os.fstat(f.fileno()).st_nlink == 0
        assert head + f.read() == data
    assert os.listdir(d) == []


def test_mkdir_and_rmdir(d):
    os.mkdir(f"{d}/sub")
    assert stat.S_ISDIR(os.stat(f"{d}/sub").st_mode)
    os.rmdir(f"{d}/sub")
    assert os.listdir(d) == []


def test_rmdir_of_non_empty_directory_fails_and_changes_nothing(d):
    os.mkdir(f"{d}/sub")
    write(f"{d}/sub/f", b"1")
    with pytest.raises(OSError) as exc:
        os.rmdir(f"{d}/sub")
    assert exc.value.errno == errno.ENOTEMPTY
    assert read(f"{d}/sub/f") == b"1"


def test_mkdir_existing_fails(d):
    os.mkdir(f"{d}/sub")
    with pytest.raises(FileExistsError):
        os.mkdir(f"{d}/sub")


def test_readdir_with_many_entries(d):
    names = {f"file-{i:05d}" for i in range(1500)}
    for name in names:
        open(f"{d}/{name}", "wb").close()
    assert set(os.listdir(d)) == names
    with os.scandir(d) as it:
        entries = list(it)
    assert len(entries) == len(names)
    assert all(e.is_file() for e in entries)


def test_symlink(d):
    write(f"{d}/target", b"1")
    os.symlink("target", f"{d}/link")
    assert os.readlink(f"{d}/link") == "target"
    assert stat.S_ISLNK(os.lstat(f"{d}/link").st_mode)
    assert read(f"{d}/link") == b"1"
    os.unlink(f"{d}/link")
    assert os.listdir(d) == ["target"]


def test_chmod_chown_utime(d):
    write(f"{d}/f", b"1")
    os.chmod(f"{d}/f", 0o750)
    assert stat.S_IMODE(os.stat(f"{d}/f").st_mode) == 0o750
    os.chown(f"{d}/f", 1234, 5678)
    assert (os.stat(f"{d}/f").st_uid, os.stat(f"{d}/f").st_gid) == (1234, 5678)
    os.utime(f"{d}/f", ns=(1_000_000_000, 2_000_000_000))
    assert os.stat(f"{d}/f").st_mtime_ns == 2_000_000_000


def test_attribute_changes_set_ctime_to_now(d):
    write(f"{d}/f", b"1")
    os.utime(f"{d}/f", ns=(1_000_000_000, 1_000_000_000))  # 2001-09-09, as `touch -d` would
    changes = [
        lambda: os.chmod(f"{d}/f", 0o640),
        lambda: os.chown(f"{d}/f", 1234, 5678),
        lambda: os.utime(f"{d}/f", ns=(1_500_000_000, 1_000_000_000)),  # touch -a
        lambda: os.utime(f"{d}/f", ns=(2_000_000_000, 2_000_000_000)),
    ]
    for change in changes:
        before = time.time_ns()
        change()
        st = os.stat(f"{d}/f")
        assert before - 10**9 <= st.st_ctime_ns <= time.time_ns() + 10**9
    assert os.stat(f"{d}/f").st_mtime_ns == 2_000_000_000


def test_statfs(mnt):
    info = os.statvfs(mnt.path)
    assert info.f_namemax == 255
    assert info.f_blocks > 0


def test_names_too_long_are_refused(d):
    with pytest.raises(OSError) as exc:
        open(f"{d}/{'x' * 256}", "wb")
    assert exc.value.errno == errno.ENAMETOOLONG
    assert os.listdir(d) == []


def test_xattrs_and_acls_are_not_supported(d):
    write(f"{d}/f", b"1")
    for call in [
        lambda: os.setxattr(f"{d}/f", "user.tag", b"v"),
        lambda: os.getxattr(f"{d}/f", "user.tag"),
        lambda: os.removexattr(f"{d}/f", "user.tag"),
        lambda: os.setxattr(f"{d}/f", "system.posix_acl_access", b"\x02\0\0\0"),
        lambda: os.getxattr(d, "system.posix_acl_default"),
    ]:
        with pytest.raises(OSError) as exc:
            call()
        assert exc.value.errno == errno.ENOTSUP
    assert os.listxattr(f"{d}/f") == []


def test_object_keys_longer_than_1024_bytes_are_refused(mnt, backend_case, d):
    if not backend_case.object_store:
        pytest.skip("a limit of object keys")
    path = d
    for i in range(3):
        path = f"{path}/{str(i) * 250}"
        os.mkdir(path)
    for make in (lambda p: open(p, "wb"), os.mkdir):
        with pytest.raises(OSError) as exc:
            make(f"{path}/{'x' * 250}")  # each name fits, the key does not
        assert exc.value.errno == errno.ENAMETOOLONG
    write(f"{path}/short", b"fits")
    assert read(f"{path}/short") == b"fits"


def test_reserved_name_is_hidden_and_refused(mnt):
    assert ".pfs" not in os.listdir(mnt.path)
    with pytest.raises(PermissionError):
        os.mkdir(f"{mnt.path}/.pfs")


def test_large_file_round_trip(d):
    digest = hashlib.sha256()
    chunk = os.urandom(MiB)
    with open(f"{d}/big", "wb") as f:
        for i in range(150):
            block = bytes([i]) + chunk[1:]
            digest.update(block)
            f.write(block)
    assert os.stat(f"{d}/big").st_size == 150 * MiB
    check = hashlib.sha256()
    with open(f"{d}/big", "rb") as f:
        while block := f.read(4 * MiB):
            check.update(block)
    assert check.hexdigest() == digest.hexdigest()


def test_concurrent_readers_and_writers(d):
    shared = os.urandom(8 * MiB)
    write(f"{d}/shared", shared)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(3):
                assert read(f"{d}/shared") == shared
        except BaseException as exc:
            errors.append(exc)

    def writer(n: int) -> None:
        try:
            payload = os.urandom(MiB + n)
            write(f"{d}/w{n}", payload)
            assert read(f"{d}/w{n}") == payload
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    threads += [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(os.listdir(d)) == ["shared", "w0", "w1", "w2", "w3"]


def test_everything_survives_a_remount(backend_case, tmp_path):
    with Mount(backend_case.uri, str(tmp_path / "m"), env=backend_case.env, args=SHORT_TTL) as mount:
        base = f"{mount.path}/persist-{uuid.uuid4().hex[:8]}"
        os.makedirs(f"{base}/empty/dir")
        write(f"{base}/file", b"data")
        os.symlink("file", f"{base}/link")
        os.symlink("../elsewhere", f"{base}/dangling")
        mount.remount()
        assert sorted(os.listdir(base)) == ["dangling", "empty", "file", "link"]
        assert os.listdir(f"{base}/empty") == ["dir"]
        assert os.readlink(f"{base}/link") == "file"
        assert os.readlink(f"{base}/dangling") == "../elsewhere"
        assert read(f"{base}/link") == b"data"


def test_two_mounts_see_each_others_closed_files(backend_case, tmp_path):
    with (
        Mount(backend_case.uri, str(tmp_path / "a"), env=backend_case.env, args=SHORT_TTL) as a,
        Mount(backend_case.uri, str(tmp_path / "b"), env=backend_case.env, args=SHORT_TTL) as b,
    ):
        name = f"shared-{uuid.uuid4().hex[:8]}"
        write(f"{a.path}/{name}", b"from a")
        assert wait_until(lambda: os.path.exists(f"{b.path}/{name}"), timeout=5)
        assert read(f"{b.path}/{name}") == b"from a"
        write(f"{b.path}/{name}", b"rewritten by b")
        assert wait_until(lambda: read(f"{a.path}/{name}") == b"rewritten by b", timeout=5)
        os.unlink(f"{a.path}/{name}")
        assert wait_until(lambda: not os.path.exists(f"{b.path}/{name}"), timeout=5)


def rel(mnt: Mount, path: str) -> str:
    """`path` inside the mount as the backend names it."""
    return os.path.relpath(path, mnt.path)


def test_fsync_publishes_before_close(mnt, backend_case, d):
    with open(f"{d}/ckpt", "wb") as f:
        f.write(b"step 1")
        f.flush()
        os.fsync(f.fileno())
        assert backend_case.raw.get(rel(mnt, f"{d}/ckpt")) == b"step 1"
        f.write(b", step 2")
    assert backend_case.raw.get(rel(mnt, f"{d}/ckpt")) == b"step 1, step 2"


def test_nothing_is_published_before_close(mnt, backend_case, d):
    with open(f"{d}/partial", "wb") as f:
        f.write(b"x" * MiB)
        assert not backend_case.raw.exists(rel(mnt, f"{d}/partial"))


def test_files_written_by_other_clients_appear(mnt, backend_case, d):
    backend_case.raw.put(rel(mnt, f"{d}/implicit/dir/obj"), b"from elsewhere")
    assert os.listdir(d) == ["implicit"]
    assert read(f"{d}/implicit/dir/obj") == b"from elsewhere"


def test_append_to_a_large_object(mnt, backend_case, d):
    data = os.urandom(32 * MiB)
    backend_case.raw.put(rel(mnt, f"{d}/big"), data)
    write(f"{d}/big", b"tail\n", mode="ab")
    assert backend_case.raw.get(rel(mnt, f"{d}/big")) == data + b"tail\n"


def test_rename_while_open_for_reading(d):
    data = os.urandom(4 * MiB)
    write(f"{d}/a", data)
    with open(f"{d}/a", "rb", buffering=0) as f:
        head = f.read(MiB)
        os.rename(f"{d}/a", f"{d}/b")
        assert head + f.read() == data
    assert os.listdir(d) == ["b"]


def test_rename_before_the_first_close_publishes_under_the_new_name(mnt, backend_case, d):
    with open(f"{d}/tmp-ckpt", "wb") as f:
        f.write(b"weights")
        os.rename(f"{d}/tmp-ckpt", f"{d}/ckpt")
    assert os.listdir(d) == ["ckpt"]
    assert backend_case.raw.get(rel(mnt, f"{d}/ckpt")) == b"weights"
    assert not backend_case.raw.exists(rel(mnt, f"{d}/tmp-ckpt"))


def test_unlink_while_writing_publishes_nothing(mnt, backend_case, d):
    with open(f"{d}/scratch", "wb") as f:
        f.write(b"temporary")
        os.unlink(f"{d}/scratch")
        assert os.fstat(f.fileno()).st_nlink == 0
        f.write(b" and more")
    assert os.listdir(d) == []
    assert not backend_case.raw.exists(rel(mnt, f"{d}/scratch"))


def test_write_through_one_handle_read_through_another(d):
    with open(f"{d}/f", "wb") as w, open(f"{d}/f", "rb") as r:
        w.write(b"shared")
        w.flush()
        assert r.read() == b"shared"


def test_rename_over_a_file_being_written_keeps_the_renamed_one(d):
    pending = open(f"{d}/ckpt", "wb")
    pending.write(b"old writer")
    pending.flush()
    write(f"{d}/new", b"new checkpoint")
    os.rename(f"{d}/new", f"{d}/ckpt")
    pending.close()
    assert os.listdir(d) == ["ckpt"]
    assert read(f"{d}/ckpt") == b"new checkpoint"


def test_mkdir_mode_is_honoured(d):
    os.mkdir(f"{d}/private", 0o700)
    assert stat.S_IMODE(os.stat(f"{d}/private").st_mode) == 0o700


def test_same_size_rewrite_by_another_client_is_seen(mnt, backend_case, d):
    write(f"{d}/f", b"version-1")
    assert read(f"{d}/f") == b"version-1"
    assert read(f"{d}/f") == b"version-1"  # unchanged: served from the page cache
    backend_case.raw.put(rel(mnt, f"{d}/f"), b"version-2")  # same size, likely the same second
    assert wait_until(lambda: read(f"{d}/f") == b"version-2", timeout=5)
