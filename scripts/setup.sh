#!/usr/bin/env bash
# Install pfs and everything its tests and demo need, on a fresh Debian 12 machine, as root. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v fusermount3 >/dev/null || ! pkg-config --exists fuse3 2>/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq fuse3 libfuse3-dev pkg-config gcc attr procps >/dev/null
fi
if ! command -v s3fs >/dev/null; then  # a peer FUSE client the benchmarks compare pfs with
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq s3fs >/dev/null
fi
if ! command -v prove >/dev/null || ! command -v autoreconf >/dev/null || ! command -v libtoolize >/dev/null \
    || [ ! -e /usr/include/sys/acl.h ]; then  # to build and run pjdfstest (tests/test_pjdfstest.py)
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq autoconf automake libtool make gcc libacl1-dev perl >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[test,bench]'

# mount(8) looks for /sbin/mount.<type>: this makes `mount -t fuse.pfs` and fstab lines work.
helper="$(python3 -c 'import shutil; print(shutil.which("mount.pfs"))')"
ln -sf "$helper" /sbin/mount.fuse.pfs
ln -sf "$helper" /sbin/mount.pfs
echo "pfs installed: $(command -v pfs)"
