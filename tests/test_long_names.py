"""Objects whose names no Linux program could open (a path component over 255 bytes, which S3 allows) are
left out of listings; the rest of their directory lists and reads as usual. Runs against moto, the one
loopback server here that stores such keys."""

from __future__ import annotations

import os

import pytest

from tests.mounting import Mount
from testservers.s3 import start_s3_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start_s3_server("moto", str(tmp_path_factory.mktemp("moto"))) as srv:
        srv.create_bucket("long")
        yield srv


def test_names_longer_than_255_bytes_are_left_out_of_listings(server, tmp_path):
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=server.url, region_name="us-east-1",
        aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key,
    )  # fmt: skip
    too_long = "n" * 300
    for key, body in [
        (f"d/{too_long}", b"a file of too long a name"),
        (f"d/{'e' * 256}/inside", b"in a directory of too long a name"),
        ("d/ok", b"fine"),
        (too_long, b"at the root"),
    ]:
        s3.put_object(Bucket="long", Key=key, Body=body)
    with Mount(server.uri("long"), str(tmp_path / "m"), env=server.env()) as m:
        assert os.listdir(m.path) == ["d"]
        assert os.listdir(f"{m.path}/d") == ["ok"]
        assert [e.name for e in os.scandir(f"{m.path}/d")] == ["ok"]
        with open(f"{m.path}/d/ok", "rb") as f:
            assert f.read() == b"fine"
        log = m.log()
    assert log.count("left ") == 3 and "longer than 255 bytes" in log
