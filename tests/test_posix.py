"""file:// is POSIX: what a pfs mount of a local directory keeps on the underlying files and how other users
see it (allow_other, with the kernel checking permissions by the stored owners and modes).

Each test looks at both sides: the mount, and the directory it mounts (the attributes must be on the files,
so that a remount, or any other program, sees them)."""

from __future__ import annotations

import ctypes
import errno
import io
import os
import shutil
import stat
import tempfile
import threading
import uuid
from collections.abc import Callable

import pytest

from pfs.backends import Meta
from pfs.errors import Refused, errno_of
from tests.mounting import Mount

NOBODY = 65534
# renameat2(2) flags (linux/fs.h)
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("chown, mknod and other users need root")


@pytest.fixture(scope="module")
def mounted():
    _need_root()
    # Under /tmp with mode 0755 all the way, so that other users can reach the mount and the directory.
    top = tempfile.mkdtemp(prefix="pfs-posix-", dir="/tmp")
    os.chmod(top, 0o755)
    base = os.path.join(top, "base")
    os.mkdir(base, 0o755)
    os.chmod(base, 0o755)
    mount = Mount(f"file://{base}", os.path.join(top, "m"), args=("-o", "allow_other,metadata_ttl=1"))
    with mount:
        yield mount, base
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def dirs(mounted):
    """(a fresh directory in the mount, the same directory in the mounted one), mode 0777."""
    mount, base = mounted
    name = "t-" + uuid.uuid4().hex[:8]
    os.mkdir(os.path.join(mount.path, name))
    os.chmod(os.path.join(mount.path, name), 0o777)
    return os.path.join(mount.path, name), os.path.join(base, name)


def errno_as(uid: int, action: Callable[[], object], umask: int = 0o022) -> int:
    """The errno of the OSError that `action` raises in a child process running as `uid` (group `uid`,
    no supplementary groups), 0 if none."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.umask(umask)
            action()
        except OSError as exc:
            code = exc.errno or 255
        except BaseException:
            code = 255
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code != 255, "the action failed otherwise than with an OSError"
    return code


def renameat2(src: str, dst: str, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(-100, os.fsencode(src), -100, os.fsencode(dst), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def test_modes_owners_and_times_live_on_the_underlying_file_and_survive_a_remount(mounted, dirs):
    mount, _ = mounted
    d, b = dirs
    with open(f"{d}/f", "wb") as f:
        f.write(b"data")
    os.chown(f"{d}/f", 1234, 5678)
    os.chmod(f"{d}/f", 0o4751)  # after the chown, which clears setuid
    os.utime(f"{d}/f", ns=(1_000_000_000, 2_000_000_000))
    under = os.stat(f"{b}/f")
    assert (stat.S_IMODE(under.st_mode), under.st_uid, under.st_gid) == (0o4751, 1234, 5678)
    assert (under.st_atime_ns, under.st_mtime_ns) == (1_000_000_000, 2_000_000_000)
    mount.remount()
    seen = os.stat(f"{d}/f")
    assert (stat.S_IMODE(seen.st_mode), seen.st_uid, seen.st_gid) == (0o4751, 1234, 5678)
    assert (seen.st_atime_ns, seen.st_mtime_ns, seen.st_ctime_ns) == (
        1_000_000_000,
        2_000_000_000,
        under.st_ctime_ns,
    )


def test_new_entries_belong_to_their_creator_with_the_callers_umask(dirs):
    d, b = dirs

    def create() -> None:
        open(f"{d}/f", "w").close()
        os.mkdir(f"{d}/sub")
        os.symlink("f", f"{d}/l")

    assert errno_as(NOBODY, create, umask=0o027) == 0
    for name, mode in (("f", 0o640), ("sub", 0o750)):
        under = os.stat(f"{b}/{name}")
        assert (under.st_uid, under.st_gid, stat.S_IMODE(under.st_mode)) == (NOBODY, NOBODY, mode), name
        seen = os.stat(f"{d}/{name}")
        assert (seen.st_uid, seen.st_gid, stat.S_IMODE(seen.st_mode)) == (NOBODY, NOBODY, mode), name
    assert os.lstat(f"{d}/l").st_uid == NOBODY


def test_a_setgid_directory_passes_its_group_on(dirs):
    d, b = dirs
    os.mkdir(f"{d}/g")
    os.chown(f"{d}/g", 0, 4321)
    os.chmod(f"{d}/g", 0o2777)
    open(f"{d}/g/f", "w").close()
    os.mkdir(f"{d}/g/sub")
    assert os.stat(f"{b}/g/f").st_gid == 4321
    assert os.stat(f"{d}/g/sub").st_gid == 4321
    assert os.stat(f"{d}/g/sub").st_mode & stat.S_ISGID


def test_the_kernel_checks_other_users_against_the_stored_owner_and_mode(dirs):
    d, _ = dirs
    with open(f"{d}/secret", "wb") as f:
        f.write(b"s")
    os.chmod(f"{d}/secret", 0o600)

    def read() -> None:
        with open(f"{d}/secret", "rb") as f:
            f.read()

    assert errno_as(NOBODY, read) == errno.EACCES
    os.chown(f"{d}/secret", NOBODY, NOBODY)
    assert errno_as(NOBODY, read) == 0
    assert errno_as(NOBODY, lambda: os.chown(f"{d}/secret", 0, 0)) == errno.EPERM


def test_a_sticky_directory_keeps_others_from_removing_what_they_do_not_own(dirs):
    d, b = dirs
    os.mkdir(f"{d}/tmp")
    os.chmod(f"{d}/tmp", 0o1777)
    open(f"{d}/tmp/roots", "w").close()
    assert errno_as(NOBODY, lambda: os.unlink(f"{d}/tmp/roots")) == errno.EPERM
    assert os.path.exists(f"{b}/tmp/roots")

    def own() -> None:
        open(f"{d}/tmp/own", "w").close()
        os.unlink(f"{d}/tmp/own")

    assert errno_as(NOBODY, own) == 0


def test_hard_links_are_one_file_with_two_names(dirs):
    d, b = dirs
    with open(f"{d}/a", "wb") as f:
        f.write(b"one")
    os.link(f"{d}/a", f"{d}/b")
    sa, sb = os.stat(f"{d}/a"), os.stat(f"{d}/b")
    assert sa.st_ino == sb.st_ino and sa.st_nlink == sb.st_nlink == 2
    assert os.stat(f"{b}/a").st_ino == os.stat(f"{b}/b").st_ino
    with open(f"{d}/b", "wb") as f:  # rewritten in place: both names keep naming the same file
        f.write(b"two!")
    with open(f"{d}/a", "rb") as f:
        assert f.read() == b"two!"
    assert os.stat(f"{b}/a").st_ino == os.stat(f"{b}/b").st_ino
    os.chmod(f"{d}/a", 0o600)
    assert stat.S_IMODE(os.stat(f"{d}/b").st_mode) == 0o600
    os.unlink(f"{d}/a")
    assert os.stat(f"{d}/b").st_nlink == 1
    with pytest.raises(PermissionError):
        os.link(d, f"{d}/dirlink")


def test_fifos_sockets_and_device_nodes(dirs):
    d, b = dirs
    os.mkfifo(f"{d}/p", 0o640)
    os.mknod(f"{d}/c", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(f"{d}/k", 0o600 | stat.S_IFBLK, os.makedev(7, 0))
    os.mknod(f"{d}/s", 0o600 | stat.S_IFSOCK)
    assert stat.S_ISFIFO(os.stat(f"{b}/p").st_mode) and stat.S_IMODE(os.stat(f"{d}/p").st_mode) == 0o640
    assert stat.S_ISCHR(os.stat(f"{d}/c").st_mode) and os.stat(f"{d}/c").st_rdev == os.makedev(1, 3)
    assert stat.S_ISBLK(os.stat(f"{d}/k").st_mode) and os.stat(f"{b}/k").st_rdev == os.makedev(7, 0)
    assert stat.S_ISSOCK(os.stat(f"{d}/s").st_mode)
    assert sorted(os.listdir(d)) == ["c", "k", "p", "s"]
    got = []
    reader = threading.Thread(target=lambda: got.append(open(f"{d}/p", "rb").read()))
    reader.start()
    with open(f"{d}/p", "wb") as f:  # the kernel carries a FIFO's bytes
        f.write(b"through the pipe")
    reader.join(10)
    assert got == [b"through the pipe"]
    os.rename(f"{d}/p", f"{d}/q")
    os.unlink(f"{d}/q")
    assert not os.path.lexists(f"{b}/q") and not os.path.lexists(f"{b}/p")


def test_rename_noreplace_and_exchange(dirs):
    d, b = dirs
    for name in "xy":
        with open(f"{d}/{name}", "wb") as f:
            f.write(name.encode())
    with pytest.raises(FileExistsError):
        renameat2(f"{d}/x", f"{d}/y", RENAME_NOREPLACE)
    renameat2(f"{d}/x", f"{d}/z", RENAME_NOREPLACE)
    renameat2(f"{d}/z", f"{d}/y", RENAME_EXCHANGE)
    with open(f"{d}/y", "rb") as f:
        assert f.read() == b"x"
    with open(f"{b}/z", "rb") as f:
        assert f.read() == b"y"


def test_a_new_version_keeps_the_mode_and_owner_and_replaces_atomically(dirs):
    d, b = dirs
    with open(f"{d}/f", "wb") as f:
        f.write(b"old")
    os.chmod(f"{d}/f", 0o640)
    os.chown(f"{d}/f", 1234, 5678)
    before = os.stat(f"{b}/f").st_ino
    with open(f"{d}/f", "wb") as f:
        f.write(b"new content")
    under = os.stat(f"{b}/f")
    assert (stat.S_IMODE(under.st_mode), under.st_uid, under.st_gid) == (0o640, 1234, 5678)
    assert under.st_ino != before  # published by a rename over the name, never written in place
    with open(f"{b}/f", "rb") as f:
        assert f.read() == b"new content"


def test_fchmod_while_writing_is_kept_by_the_published_file(dirs):
    d, b = dirs
    fd = os.open(f"{d}/f", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"x")
        os.fchmod(fd, 0o711)
    finally:
        os.close(fd)
    assert stat.S_IMODE(os.stat(f"{b}/f").st_mode) == 0o711
    assert stat.S_IMODE(os.stat(f"{d}/f").st_mode) == 0o711


# ---- in-process: the backend and the inode table, without a mount ------------------------------------------


@pytest.fixture
def local(tmp_path):
    from pfs.backends import BackendOptions, open_backend

    _need_root()
    backend = open_backend(f"file://{tmp_path}", BackendOptions())
    yield backend, str(tmp_path)
    backend.close()


def test_the_local_backend_reads_and_stores_attributes(local):
    from pfs.backends import Kind, MetaChange

    b, root = local
    entry = b.write_file("f", io.BytesIO(b"abc"), 3, meta=Meta(mode=0o600, uid=1234, gid=5678))
    st = os.stat(f"{root}/f")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 1234, 5678)
    assert entry.meta == Meta(0o600, 1234, 5678, st.st_atime_ns, st.st_ctime_ns, 1, st.st_ino, 0)
    after = b.set_meta("f", MetaChange(mode=0o640, atime_ns=10**9, mtime_ns=2 * 10**9))
    assert (after.meta.mode, after.meta.atime_ns, after.mtime_ns) == (0o640, 10**9, 2 * 10**9)
    again = b.write_file("f", io.BytesIO(b"new"), 3)  # a new version keeps the old one's mode and owner
    assert (again.meta.mode, again.meta.uid, again.meta.gid) == (0o640, 1234, 5678)
    b.make_node("p", Kind.FIFO)
    assert {e.name: e.kind for e in b.list_dir("")} == {"f": Kind.FILE, "p": Kind.FIFO}
    linked = b.link("f", "g")
    assert linked.meta.nlink == 2 and linked.meta.ino == b.stat("f").meta.ino
    with pytest.raises(Refused) as refused:
        b.link("", "d")
    assert errno_of(refused.value) == errno.EPERM


def test_names_of_one_file_share_one_inode():
    from pfs.backends import Entry, Kind
    from pfs.fs.inodes import InodeTable

    table = InodeTable(root_mtime_ns=0)
    two = Meta(mode=0o644, nlink=2, ino=77)
    a = table.add("a", Entry("a", Kind.FILE, 1, 1, two))
    a.lookups = 1  # the kernel holds it
    assert table.add("b", Entry("b", Kind.FILE, 1, 1, two)) is a  # found by the store's inode number
    table.move("a", "c", tree=False)
    assert a.path == "c" and table.at("b") is a
    table.remove_path("c")
    assert a.path == "b" and table.at("b") is a and table.at("c") is None
    other = table.add("x", Entry("x", Kind.FILE, 1, 1, Meta(nlink=1, ino=77)))
    assert other is not a  # a single name is never taken for another's (inode numbers are reused)
