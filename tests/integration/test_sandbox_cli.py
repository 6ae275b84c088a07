"""``drkit sandbox up|status|down`` against real servers: up serves, down leaves nothing."""

from __future__ import annotations

import json
import os
import subprocess
import time

import boto3
import psycopg
import pytest
import redis
from pgenv import DRKIT, workdir


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DRKIT, "sandbox", *args], capture_output=True, text=True, timeout=300)


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("kind", ["postgres", "s3", "redis"])
def test_sandbox_up_status_down(kind):
    d = workdir(f"sbx-{kind}")
    up = _run("up", kind, "--dir", str(d), "--json")
    assert up.returncode == 0, up.stderr
    state = json.loads(up.stdout)
    try:
        if kind == "postgres":
            with psycopg.connect(state["dsn"], autocommit=True) as c:
                assert c.execute("SELECT 1").fetchone()[0] == 1
        elif kind == "redis":
            with redis.Redis.from_url(state["url"]) as c:
                assert c.ping()
        else:
            creds = dict(line.split("=", 1) for line in (d / "s3-credentials").read_text().split())
            assert creds["AWS_SECRET_ACCESS_KEY"] not in up.stdout  # never printed
            s3 = boto3.client("s3", endpoint_url=state["endpoint_url"], region_name=state["region"],
                              aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"])
            s3.create_bucket(Bucket="probe")
            assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["probe"]
        assert _run("status", str(d)).returncode == 0
    finally:
        down = _run("down", str(d))
    assert down.returncode == 0, down.stderr
    assert _gone(int(state["pid"]))
    assert _run("status", str(d)).returncode != 0
