"""The mount lifecycle and bad input, through the command line a person uses."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import uuid

import pytest

from pfs.mount import control, kernel
from tests.mounting import Mount, run_pfs, wait_until


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pfs: error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def mountpoint(tmp_path):
    path = tmp_path / "m"
    path.mkdir()
    yield str(path)
    assert kernel.mount_at(str(path)) is None, "a failed mount must leave nothing mounted"


@pytest.fixture
def local_mount(tmp_path):
    """A mount of a fresh local directory (tmp_path/data) that the test may unmount or kill itself."""
    (tmp_path / "data").mkdir()
    mount = Mount(f"file://{tmp_path}/data", str(tmp_path / "m")).start()
    yield mount
    mount.cleanup()


def s3_uri(server, bucket: str, prefix: str = "") -> str:
    return f"s3://{bucket}/{prefix}?endpoint_override={server.endpoint}&scheme=http"


def s3_env(server, secret: str | None = None) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": secret or server.secret_key}


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("ftp://host/x", "ftp"),
        ("file://relative/dir", "file://"),
        ("s3://", "bucket"),
        ("/no/scheme", "/no/scheme"),
    ],
)
def test_invalid_uris_are_one_line_errors(uri, fragment, mountpoint):
    assert_one_line_error(run_pfs("mount", uri, mountpoint), fragment)


def test_missing_local_directory(tmp_path, mountpoint):
    assert_one_line_error(run_pfs("mount", f"file://{tmp_path}/absent", mountpoint), "absent")


def test_missing_bucket(s3_server, mountpoint):
    result = run_pfs("mount", s3_uri(s3_server, "no-such-bucket"), mountpoint, env=s3_env(s3_server))
    assert_one_line_error(result, "no-such-bucket")


def test_wrong_credentials_never_echo_the_secret(s3_server, s3_bucket, mountpoint):
    secret = "wrong-" + uuid.uuid4().hex
    result = run_pfs("mount", s3_uri(s3_server, s3_bucket), mountpoint, env=s3_env(s3_server, secret))
    assert_one_line_error(result)
    assert secret not in result.stderr + result.stdout


def test_unreachable_endpoint_fails_quickly(mountpoint):
    uri = "s3://bucket/x?endpoint_override=127.0.0.1:9&scheme=http"
    env = {"AWS_ACCESS_KEY_ID": "pfsaccesskey", "AWS_SECRET_ACCESS_KEY": "pfssecretkey123"}
    result = run_pfs("mount", uri, mountpoint, "--timeout", "3", env=env, timeout=30)
    assert_one_line_error(result, "127.0.0.1:9")


def test_mount_and_umount_load_neither_the_backend_nor_the_fuse_stack():
    """The daemon checks the backend; the command that starts it loads only what it needs (every mount, a
    CSI volume's too, waited 0.45 s for pyarrow in the caller and 0.2 s for the other commands' modules)."""
    script = (
        "import sys, click; from pfs.cli import cli; import pfs.mount.lifecycle\n"
        "ctx = click.Context(cli)\n"
        "assert cli.get_command(ctx, 'mount') and cli.get_command(ctx, 'umount')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'pyarrow', 'rich', 'pyfuse3', 'trio'}))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_missing_mountpoint(tmp_path):
    assert_one_line_error(run_pfs("mount", f"file://{tmp_path}", f"{tmp_path}/nowhere"), "nowhere")


def test_unknown_mount_option(tmp_path, mountpoint):
    assert_one_line_error(run_pfs("mount", f"file://{tmp_path}", mountpoint, "-o", "bogus=1"), "bogus")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("-o", "timeout=nan"), "'timeout'"),
        (("--timeout", "0"), "'timeout'"),
        (("--timeout", "-3"), "'timeout'"),
        (("-o", "metadata_ttl=nan"), "'metadata_ttl'"),
        (("--metadata-ttl", "inf"), "'metadata_ttl'"),
        (("-o", "uid=-5"), "'uid'"),
        (("-o", "gid=4294967296"), "'gid'"),
        (("-o", "metrics_port=99999"), "'metrics_port'"),
        (("-o", "cache_size=inf"), "'cache_size'"),
        (("-o", "threads=0"), "'threads'"),
        (("-o", "staging_dir=/proc"), "'staging_dir'"),
        (("-o", "log_file=/proc/pfs.log"), "'log_file'"),
    ],
)
def test_bad_option_values_are_one_line_and_start_nothing(tmp_path, mountpoint, args, fragment):
    result = run_pfs("mount", f"file://{tmp_path}", mountpoint, *args)
    assert_one_line_error(result, fragment, "allowed")
    assert result.returncode == 2


def test_bad_arguments_are_one_line_not_the_usage_text(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for args in [
        ("mount", f"file://{tmp_path}", str(a_file)),
        ("stats", str(tmp_path / "nonexistent")),
        ("sync", "--timeout", "-1", str(tmp_path), str(tmp_path / "copy")),
        ("mount", "--no-such-flag"),
    ]:
        result = run_pfs(*args)
        assert_one_line_error(result)
        assert result.returncode == 2 and "Usage:" not in result.stderr


def test_umount_of_something_else(tmp_path):
    assert_one_line_error(run_pfs("umount", str(tmp_path)), "not a pfs mount")


def test_mount_twice_on_the_same_mountpoint(tmp_path):
    (tmp_path / "data").mkdir()
    with Mount(f"file://{tmp_path}/data", str(tmp_path / "m")) as mount:
        assert_one_line_error(run_pfs("mount", f"file://{tmp_path}/data", mount.path), "already")


def test_read_only_mount_refuses_changes(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_bytes(b"original")
    with Mount(f"file://{data}", str(tmp_path / "m"), args=("-o", "ro")) as mount:
        assert open(f"{mount.path}/f", "rb").read() == b"original"
        for attempt in (
            lambda: open(f"{mount.path}/f", "wb"),
            lambda: open(f"{mount.path}/new", "wb"),
            lambda: os.mkdir(f"{mount.path}/dir"),
            lambda: os.unlink(f"{mount.path}/f"),
            lambda: os.rename(f"{mount.path}/f", f"{mount.path}/g"),
            lambda: os.symlink("f", f"{mount.path}/link"),
        ):
            with pytest.raises(OSError) as exc:
                attempt()
            assert exc.value.errno == errno.EROFS
    assert sorted(os.listdir(data)) == ["f"]
    assert (data / "f").read_bytes() == b"original"


def test_umount_uploads_pending_writes_and_waits_for_the_daemon(local_mount, tmp_path):
    mount = local_mount
    with open(f"{mount.path}/f", "wb") as f:
        f.write(b"written")
    pid = mount.pid
    mount.stop()
    assert kernel.wait_for_exit(pid, 0)
    assert (tmp_path / "data" / "f").read_bytes() == b"written"


def test_sigterm_uploads_open_files_and_unmounts(local_mount, tmp_path):
    mount = local_mount
    f = open(f"{mount.path}/open-at-exit", "wb")
    f.write(b"still open")
    f.flush()
    os.kill(mount.pid, 15)
    assert kernel.wait_for_exit(mount.pid, 30)
    assert (tmp_path / "data" / "open-at-exit").read_bytes() == b"still open"
    assert kernel.mount_at(mount.path) is None


def test_dead_daemon_leaves_a_mount_that_umount_clears(local_mount, tmp_path):
    mount = local_mount
    os.kill(mount.pid, 9)
    assert kernel.wait_for_exit(mount.pid, 10)
    assert kernel.is_stale(mount.path)
    result = run_pfs("mount", f"file://{tmp_path}/data", mount.path)
    assert_one_line_error(result, "pfs umount")
    assert run_pfs("umount", mount.path).returncode == 0
    assert kernel.mount_at(mount.path) is None


def test_control_surface(tmp_path):
    (tmp_path / "data").mkdir()
    with Mount(f"file://{tmp_path}/data", str(tmp_path / "m")) as mount:
        assert control.daemon_pid(mount.path) == mount.pid
        entry = kernel.mount_at(mount.path)
        assert entry is not None
        with open(f"/sys/class/bdi/{entry.device}/read_ahead_kb") as f:
            assert f.read().strip() == "1024"  # the kernel sends 1 MiB reads, not 128 KiB
        assert control.stats(mount.path)["ops"]["getxattr"] >= 1
        result = run_pfs("stats", mount.path, "--json")
        assert result.returncode == 0 and '"ops"' in result.stdout


def test_secrets_stay_out_of_ps_and_logs(s3_server, s3_bucket, tmp_path):
    mount = Mount(s3_uri(s3_server, s3_bucket), str(tmp_path / "m"), env=s3_env(s3_server), args=("--debug",))
    with mount:
        with open(f"{mount.path}/f", "wb") as f:
            f.write(b"x")
        with open(f"/proc/{mount.pid}/cmdline", "rb") as f:
            cmdline = f.read().decode()
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        pfs_processes = "\n".join(line for line in ps.splitlines() if "pfs" in line)
    for text in (cmdline, pfs_processes, mount.log()):
        assert s3_server.secret_key not in text
    assert "mounted" in mount.log()


def test_mount_t_fuse_pfs(tmp_path):
    helper = shutil.which("mount.fuse.pfs", path="/sbin:/usr/sbin")
    assert helper, "the setup installs /sbin/mount.fuse.pfs; run the README's first command"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f").write_bytes(b"via mount(8)")
    target = tmp_path / "m"
    target.mkdir()
    result = subprocess.run(
        ["mount", "-t", "fuse.pfs", f"file://{tmp_path}/data", str(target), "-o", "ro,metadata_ttl=5"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    try:
        assert (target / "f").read_bytes() == b"via mount(8)"
        entry = kernel.mount_at(str(target))
        assert entry is not None and entry.fstype == "fuse.pfs"
    finally:
        assert run_pfs("umount", str(target)).returncode == 0


def test_credentials_file_beats_the_environment(s3_server, s3_bucket, tmp_path):
    creds = tmp_path / "creds"
    creds.write_text(
        f"[training]\naws_access_key_id = {s3_server.access_key}\n"
        f"aws_secret_access_key = {s3_server.secret_key}\n"
    )
    creds.chmod(0o600)
    wrong = s3_env(s3_server, secret="not-the-secret-" + uuid.uuid4().hex)
    options = ("-o", f"credentials={creds},profile=training")
    with Mount(s3_uri(s3_server, s3_bucket), str(tmp_path / "m"), env=wrong, args=options) as mount:
        with open(f"{mount.path}/with-file-credentials", "wb") as f:
            f.write(b"ok")
        assert "with-file-credentials" in os.listdir(mount.path)


def test_umount_with_open_files_is_refused_unless_lazy(local_mount, tmp_path):
    mount = local_mount
    f = open(f"{mount.path}/held", "wb")
    f.write(b"held open")
    f.flush()  # to the mount; the upload happens only at umount
    assert_one_line_error(run_pfs("umount", mount.path), "busy")
    assert run_pfs("umount", "--lazy", mount.path).returncode == 0
    assert (tmp_path / "data" / "held").read_bytes() == b"held open"  # flushed before detaching
    assert kernel.mount_at(mount.path) is None
    f.close()
    assert kernel.wait_for_exit(mount.pid, 10)


def test_foreground_mount_serves_until_unmounted(tmp_path):
    (tmp_path / "data").mkdir()
    target = tmp_path / "m"
    target.mkdir()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "pfs", "mount", "-f", f"file://{tmp_path}/data", str(target)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(lambda: kernel.mount_at(str(target)) is not None, timeout=30)
        (target / "f").write_bytes(b"foreground")
        assert run_pfs("umount", str(target)).returncode == 0
        assert daemon.wait(timeout=30) == 0
        assert "mounted" in daemon.stderr.read()  # logs go to stderr in the foreground
        assert (tmp_path / "data" / "f").read_bytes() == b"foreground"
    finally:
        if daemon.poll() is None:
            daemon.kill()
        subprocess.run(["fusermount3", "-u", "-z", str(target)], capture_output=True)


def test_fstab_line(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f").write_bytes(b"via fstab")
    target = tmp_path / "m"
    target.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"file://{tmp_path}/data  {target}  fuse.pfs  ro,noauto,_netdev,metadata_ttl=2  0 0\n")
    result = subprocess.run(["mount", "--fstab", str(fstab), str(target)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    try:
        assert (target / "f").read_bytes() == b"via fstab"
    finally:
        assert run_pfs("umount", str(target)).returncode == 0
