#!/usr/bin/env bash
# Install pfs WITHOUT extras into a fresh virtual environment and run every command once there, so a
# dependency the code imports but pyproject.toml does not declare fails here instead of on a user's
# machine (the test extras would hide it). Needs fuse3 and libfuse3-dev (pyfuse3 builds from source) and
# root for the mount; uses pip's cache, so after the first run it takes well under a minute.
set -euo pipefail
checkout="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/pfs-install-check.XXXXXX")"
mnt="$work/m"

cleanup() {
    if grep -qs " $mnt " /proc/mounts; then
        "$work/venv/bin/pfs" umount "$mnt" || fusermount3 -u -z "$mnt" || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# Only what the package itself brings: nothing from the checkout or the caller's environment.
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV
cd "$work"
step() { echo "check_install: $* (${SECONDS}s)"; }
step "a fresh venv, pip install $checkout"
python3 -m venv venv
venv/bin/python -m pip install -qq --no-compile --progress-bar off --disable-pip-version-check "$checkout"
pfs="$work/venv/bin/pfs"

step "--help of every command"
"$pfs" --help >/dev/null
venv/bin/python - <<'PY'  # every subcommand's --help, in one process
import sys
from click.testing import CliRunner
from pfs.cli import cli

def walk(command, path):
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from walk(sub, [*path, name])

for path in walk(cli, []):
    result = CliRunner().invoke(cli, [*path, "--help"])
    if result.exit_code != 0:
        sys.exit(f"pfs {' '.join(path)} --help failed: {result.output}{result.exception!r}")
PY
venv/bin/mount.pfs -h 2>/dev/null || [ $? -eq 32 ]  # its usage line is an error exit, like mount(8)'s
venv/bin/pfs-csi --help >/dev/null

step "mount a file:// directory, read, stats, warmup, umount"
mkdir -p data/sub "$mnt"
head -c 3000000 /dev/urandom >data/sub/blob
echo "hello" >data/greeting
"$pfs" mount "file://$work/data" "$mnt" --cache-dir "$work/cache" --log-file "$work/mount.log" >/dev/null
cmp data/sub/blob "$mnt/sub/blob"
[ "$(cat "$mnt/greeting")" = hello ]
"$pfs" stats --json "$mnt" >/dev/null
"$pfs" warmup "$mnt" >/dev/null
"$pfs" umount "$mnt"
"$pfs" cache info --cache-dir "$work/cache" >/dev/null

step "snapshot, warmup of a snapshot, sync"
"$pfs" snapshot create "file://$work/data" v1 >/dev/null
"$pfs" snapshot list "file://$work/data" | grep -qx v1
"$pfs" warmup --snapshot v1 "file://$work/data" --cache-dir "$work/cache" >/dev/null
"$pfs" sync "$work/data" "$work/copy" >/dev/null
cmp data/sub/blob copy/sub/blob
step "ok"
