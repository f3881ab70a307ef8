"""StagedFile over a real file:// backend: appends and partial writes never download the base object."""

from __future__ import annotations

import os

import pytest

from pfs.backends import BackendOptions, open_backend
from pfs.fs.staging import StagedFile

MiB = 1 << 20


@pytest.fixture
def backend(tmp_path):
    (tmp_path / "root").mkdir()
    return open_backend(f"file://{tmp_path}/root", BackendOptions())


@pytest.fixture
def base(backend, tmp_path):
    data = os.urandom(64 * MiB)
    (tmp_path / "root" / "big").write_bytes(data)
    return data


def staged_over(backend, tmp_path, size: int) -> StagedFile:
    (tmp_path / "staging").mkdir(exist_ok=True)
    return StagedFile(str(tmp_path / "staging"), size, lambda: backend.open_reader("big", size))


def allocated_bytes(staged: StagedFile) -> int:
    return os.fstat(staged._fd).st_blocks * 512


def test_append_stages_only_the_new_bytes(backend, base, tmp_path):
    staged = staged_over(backend, tmp_path, len(base))
    staged.write(len(base), b"one more line\n")
    assert staged.size == len(base) + 14
    assert allocated_bytes(staged) <= 64 * 1024  # the sparse staging file holds the line, not the object
    assert staged.read(len(base) - 4, 100) == base[-4:] + b"one more line\n"
    source = staged.source()
    assert b"".join(iter(lambda: source.read(8 * MiB), b"")) == base + b"one more line\n"


def test_overwrite_in_the_middle_and_truncate(backend, base, tmp_path):
    staged = staged_over(backend, tmp_path, len(base))
    staged.write(10 * MiB, b"X" * 100)
    staged.write(10 * MiB + 50, b"Y" * 100)  # overlaps the first write
    staged.truncate(20 * MiB)
    staged.truncate(21 * MiB)  # extended again: zeros, not the old bytes
    expected = base[: 10 * MiB] + b"X" * 50 + b"Y" * 100 + base[10 * MiB + 150 : 20 * MiB] + bytes(MiB)
    assert staged.read(0, 30 * MiB) == expected
    assert staged.size == 21 * MiB


def test_upload_source_can_rewind_for_a_retry(backend, base, tmp_path):
    staged = staged_over(backend, tmp_path, len(base))
    staged.write(0, b"head")
    source = staged.source()
    assert source.read(4) == b"head"
    source.seek(0)
    assert source.read(8) == b"head" + base[4:8]
