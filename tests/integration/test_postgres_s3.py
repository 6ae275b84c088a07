"""PostgreSQL point-in-time restore with the repository on real S3 servers (moto, versitygw),
and the master key wrapped by KMS (moto's KMS)."""

from __future__ import annotations

import json
import time
import uuid

import boto3
import pytest
from pgenv import PgEnv, make_pg_env


def _s3_env(server) -> tuple[str, dict, dict[str, str]]:
    bucket = server.create_bucket(f"drkit-pg-{uuid.uuid4().hex[:12]}")
    s3 = {"endpoint_url": server.endpoint_url, "region": server.region, "addressing_style": "path"}
    env = {
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_DEFAULT_REGION": server.region,
    }
    return f"s3://{bucket}/prod/pg", s3, env


def _pitr_roundtrip(env: PgEnv) -> None:
    with env.conn() as c:
        c.execute("CREATE TABLE events (id int PRIMARY KEY, payload text)")
        c.execute("INSERT INTO events SELECT g, md5(g::text) FROM generate_series(1, 1000) g")
    env.drkit("backup", "main")
    marks = []
    with env.conn() as c:
        for i in range(2000, 2010):
            c.execute("INSERT INTO events VALUES (%s, 'late')", (i,))
            marks.append((i, c.execute("SELECT clock_timestamp()").fetchone()[0]))
            time.sleep(0.05)
    env.switch_and_wait_archived()
    row_id, t = marks[4]
    target = env.root / "restored"
    res = json.loads(env.drkit("restore", "main", "--point-in-time", t.isoformat(), "--target-dir", str(target),
                               "--start", "--json").stdout)
    try:
        with env.restored_conn(target, res["port"]) as c:
            ids = [r[0] for r in c.execute("SELECT id FROM events ORDER BY id").fetchall()]
    finally:
        env.stop_datadir(target)
    assert ids == list(range(1, 1001)) + [i for i, _ in marks if i <= row_id]
    verify = json.loads(env.drkit("verify", "--json").stdout)
    assert verify["ok"] and verify["log_segments"] >= 1


@pytest.mark.parametrize("server_fixture", ["moto_server", "versitygw_server"])
def test_pitr_with_s3_repository(request, server_fixture):
    server = request.getfixturevalue(server_fixture)
    url, s3, env_vars = _s3_env(server)
    env = make_pg_env("s3", repo_url=url, s3=s3, env=env_vars)
    try:
        _pitr_roundtrip(env)
    finally:
        env.close()


def test_kms_wrapped_repository_and_wrong_kms_key(moto_server):
    url, s3, env_vars = _s3_env(moto_server)
    kms = boto3.client("kms", endpoint_url=moto_server.endpoint_url, region_name=moto_server.region,
                       aws_access_key_id=moto_server.access_key, aws_secret_access_key=moto_server.secret_key)
    key_id = kms.create_key(Description="drkit test")["KeyMetadata"]["Arn"]
    other_id = kms.create_key(Description="someone else's")["KeyMetadata"]["Arn"]
    env = make_pg_env("kms", repo_url=url, s3=s3, env=env_vars,
                      encryption={"kms_key_id": key_id, "kms_endpoint_url": moto_server.endpoint_url,
                                  "kms_region": moto_server.region})
    try:
        _pitr_roundtrip(env)
        import yaml

        cfg = yaml.safe_load(env.config_path.read_text())
        cfg["encryption"]["kms_key_id"] = other_id
        bad = env.root / "bad.yaml"
        bad.write_text(yaml.safe_dump(cfg))
        import os
        import subprocess

        from pgenv import DRKIT

        proc = subprocess.run([DRKIT, "--config", str(bad), "list"], capture_output=True, text=True,
                              env={**os.environ, **env_vars})
        assert proc.returncode == 4, proc.stderr
        assert "does not unlock" in proc.stderr
    finally:
        env.close()
