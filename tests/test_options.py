"""The option table (pfs.options.OPTIONS) against what is made from it and what is written about it: the
option classes, the `-o` parser, `pfs mount --help` and the README's table of options. In process."""

from __future__ import annotations

import dataclasses
import pathlib
import re

import pytest
from click.testing import CliRunner

from pfs.backends import BackendOptions
from pfs.cli.mount import mount
from pfs.errors import UsageError
from pfs.options import OPTIONS, MountOptions, Option, apply_o, set_option

pytestmark = pytest.mark.unit  # in process, no kernel: `pytest -m unit`

README = pathlib.Path(__file__).parent.parent / "README.md"
# A value each option accepts, and what it becomes.
SAMPLES = {
    "uid": ("1000", 1000), "gid": ("1000", 1000), "umask": ("027", 0o027), "metadata_ttl": ("2.5", 2.5),
    "timeout": ("3", 3.0), "endpoint": ("127.0.0.1:9000", "127.0.0.1:9000"), "region": ("bj", "bj"),
    "credentials": ("/etc/creds", "/etc/creds"), "profile": ("p", "p"), "threads": ("8", 8),
    "readahead_kb": ("0", 0), "staging_dir": ("/s", "/s"), "failed_uploads": ("drop", "drop"),
    "snapshot": ("v1", "v1"), "log_file": ("/l.log", "/l.log"), "cache_dir": ("/c", "/c"),
    "cache_size": ("1G", 1 << 30), "free_space_ratio": ("0.25", 0.25), "memory_limit": ("64M", 64 << 20),
    "block_size": ("1M", 1 << 20), "prefetch": ("8M", 8 << 20), "metrics_port": ("9100", 9100),
}  # fmt: skip


def readme_rows() -> list[list[str]]:
    """The cells of each row of the README's table of options."""
    text = README.read_text()
    section = text[text.index("### Options\n") :]
    table = section[section.index("| option |") :].split("\n\n", 1)[0].splitlines()
    assert table[1].startswith("| --- |")
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]] for row in table[2:]]


def plain(cell: str) -> str:
    return cell.replace("`", "").replace("\\|", "|")


def expected_row(option: Option) -> list[str]:
    flag = f"{option.flag} {option.metavar}".strip() if option.flag else ""
    return [flag, option.form, option.default_text, option.meaning]


def test_the_readme_table_says_what_the_option_table_does():
    rows = readme_rows()
    assert [plain(row[1]) for row in rows] == [option.form for option in OPTIONS]
    for row, option in zip(rows, OPTIONS, strict=True):
        assert [plain(row[0]), plain(row[1]), plain(row[2]), row[3].replace("\\|", "|")] == expected_row(
            option
        )


def test_option_classes_have_exactly_the_table_fields():
    mount_attrs = [option.attr for option in OPTIONS if not option.backend]
    assert sorted(mount_attrs) == sorted(f.name for f in dataclasses.fields(MountOptions))
    backend_fields = {f.name for f in dataclasses.fields(BackendOptions)}
    assert {option.attr for option in OPTIONS if option.backend} <= backend_fields
    assert len({option.key for option in OPTIONS}) == len(OPTIONS)


def test_defaults_come_from_the_table_and_read_back():
    mount, backend = MountOptions(), BackendOptions()
    for option in OPTIONS:
        value = getattr(backend if option.backend else mount, option.attr)
        if option.default_factory is None:
            assert value == option.default, option.key
        else:
            assert value == option.default_factory(), option.key
        if option.shown_default is None and option.value is not None and option.default is not None:
            # The default as people read it is one the option itself reads as that default.
            assert option.value.convert(option.default_text) == option.default, option.key


@pytest.mark.parametrize("option", OPTIONS, ids=lambda option: option.key)
def test_every_option_is_accepted_with_o(option: Option):
    mount, backend = MountOptions(), BackendOptions()
    text, value = SAMPLES.get(option.key, (None, True))
    apply_o(option.key if text is None else f"{option.key}={text}", mount, backend)
    assert getattr(backend if option.backend else mount, option.attr) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus=1", "unknown mount option 'bogus' (see 'pfs mount --help')"),
        ("ro=1", "unknown mount option 'ro' (see 'pfs mount --help')"),
        ("cache_size", "unknown mount option 'cache_size' (see 'pfs mount --help')"),
        ("timeout=0", "bad value for option 'timeout': '0' (allowed: seconds, more than 0)"),
        ("failed_uploads=maybe", "bad value for option 'failed_uploads': 'maybe' (allowed: keep or drop)"),
    ],
)
def test_o_errors_name_the_option_and_what_is_allowed(text: str, message: str):
    with pytest.raises(UsageError) as caught:
        apply_o(text, MountOptions(), BackendOptions())
    assert str(caught.value) == message


def test_mount8_options_are_ignored():
    mount, backend = MountOptions(), BackendOptions()
    apply_o("defaults,_netdev,noatime,x-systemd.automount,rw", mount, backend)
    assert (mount, backend) == (MountOptions(), BackendOptions())


def test_mount_help_lists_every_flag_and_every_o_form():
    result = CliRunner().invoke(mount, ["--help"], terminal_width=1000)
    assert result.exit_code == 0, result.output
    for option in OPTIONS:
        assert option.form in result.output
        if option.flag:
            assert re.search(rf"^\s+{option.flag}\b", result.output, re.MULTILINE), option.flag


def test_flags_are_read_and_checked_as_their_o_forms(monkeypatch):
    started = []
    monkeypatch.setattr("pfs.mount.lifecycle.start", lambda *args: started.append(args))
    args = ["file:///x", "/m", "-o", "cache_size=1G,anonymous", "--cache-size", "2G", "--read-only"]
    result = CliRunner().invoke(mount, [*args, "--timeout", "3", "--metrics-port", "9100"])
    assert result.exit_code == 0, result.output
    (_uri, _path, options, backend, _foreground) = started[0]
    assert (options.cache_size, options.read_only, options.metrics_port) == (2 << 30, True, 9100)
    assert (backend.timeout, backend.anonymous) == (3.0, True)
    bad = CliRunner().invoke(mount, ["file:///x", "/m", "--free-space-ratio", "1"])
    assert isinstance(bad.exception, UsageError)
    assert (
        str(bad.exception)
        == "bad value for option 'free_space_ratio': '1' (allowed: a ratio from 0 to below 1)"
    )


def test_set_option_sets_backend_fields_by_their_own_names():
    backend = BackendOptions()
    set_option("credentials", "/etc/creds", MountOptions(), backend)
    assert backend.credentials_file == "/etc/creds"
