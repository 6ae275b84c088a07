"""``drkit metrics --push`` and ``drkit schedule due --push`` against a real Prometheus Pushgateway
(Debian's ``prometheus-pushgateway``, one instance per test on a free port, no persistence): what
the gateway serves parses with the Prometheus text parser and holds the values ``drkit metrics``
and ``list --json`` give; basic auth comes from the environment; an unreachable or refusing
gateway is a clear error with exit 10, never a traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from test_redis_dumper import PASSWORD, RedisEnv, renv  # noqa: F401 - the fixture

from drkit.repository.manifest import parse_iso

GATEWAY = "/usr/bin/prometheus-pushgateway"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def pushgateway(root: Path, web_config: dict | None = None) -> Iterator[str]:
    port = free_port()
    args = [GATEWAY, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="]
    if web_config is not None:
        path = root / "pushgateway-web.yml"
        path.write_text(yaml.safe_dump(web_config))
        args.append(f"--web.config.file={path}")
    log = open(root / "pushgateway.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, (root / "pushgateway.log").read_text()
                assert time.monotonic() < deadline, "the Pushgateway did not start"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def scrape(url: str, auth: tuple[str, str] | None = None) -> str:
    req = urllib.request.Request(url + "/metrics")
    if auth:
        import base64

        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def drkit_samples(got: dict[tuple[str, tuple], float], **group: str) -> dict[tuple[str, tuple], float]:
    """The gateway's samples of one push group, with the grouping labels taken off again."""
    out = {}
    for (name, labels), value in got.items():
        d = dict(labels)
        if name.startswith("drkit_") and all(d.get(k) == v for k, v in group.items()):
            out[(name, tuple(sorted((k, v) for k, v in d.items() if k not in group)))] = value
    return out


def backup(renv: RedisEnv) -> dict:  # noqa: F811
    c = renv.primary.client()
    c.flushall()
    c.mset({f"k:{i}": "v" * 100 for i in range(500)})
    return json.loads(renv.drkit("backup", "cache", "--json").stdout)


def test_metrics_push_holds_what_drkit_metrics_and_list_say(renv: RedisEnv) -> None:  # noqa: F811
    full = backup(renv)
    with pushgateway(renv.root) as url:
        r = renv.drkit("metrics", "cache", "--push", url)
        assert r.stdout == "" and "instance=cache" in r.stderr, r.stderr
        got = drkit_samples(samples(scrape(url)), job="drkit", instance="cache")
    printed = samples(renv.drkit("metrics", "cache").stdout)
    listing = json.loads(renv.drkit("list", "cache", "--json").stdout)[0]
    src = (("source", "cache"),)
    assert got[("drkit_backup_last_success_timestamp_seconds", (("source", "cache"), ("type", "full")))] == \
        pytest.approx(parse_iso(full["finished"]).timestamp())
    assert got[("drkit_newest_safe_timestamp_seconds", src)] == \
        pytest.approx(parse_iso(listing["newest_safe_time"]).timestamp())
    assert got[("drkit_backup_read_bytes_total", src)] == sum(b["size"] for b in listing["backups"]) > 0
    assert got[("drkit_rpo_seconds", src)] == pytest.approx(listing["current_rpo_seconds"], abs=10)
    # Everything `drkit metrics` prints reached the gateway, with the same values (the RPO moves on).
    assert set(printed) == set(got)
    for k, v in printed.items():
        assert got[k] == pytest.approx(v, abs=10 if k[0] == "drkit_rpo_seconds" else 1e-6), k


def test_schedule_due_pushes_its_run_to_its_own_group(renv: RedisEnv) -> None:  # noqa: F811
    renv.primary.client().set("a", "1")
    sched = renv.root / "schedules"
    sched.mkdir()
    (sched / "p.yaml").write_text(yaml.safe_dump({"sources": ["cache"], "full": "0 0 1 1 *"}))
    with pushgateway(renv.root) as url:
        renv.drkit("metrics", "--push", url, "--job", "nightly")  # another group: must survive
        r = renv.drkit("schedule", "due", "cache", "--push", url, "--job", "nightly", "--json")
        report = json.loads(r.stdout)
        assert [j["action"] for j in report["jobs"]] == ["ran"], report
        got = samples(scrape(url))
    mine = drkit_samples(got, job="nightly", instance="cache")
    assert mine[("drkit_job_last_exit_code", (("source", "cache"), ("type", "full")))] == 0
    assert 0 <= mine[("drkit_lock_wait_seconds", (("lease", "job/cache"),))] < 5
    listing = json.loads(renv.drkit("list", "cache", "--json").stdout)[0]
    assert mine[("drkit_backup_last_success_timestamp_seconds", (("source", "cache"), ("type", "full")))] == \
        pytest.approx(parse_iso(listing["backups"][-1]["finished"]).timestamp())
    # The earlier push of every source (group instance=all) is still there: groups do not erase each other.
    everyone = drkit_samples(got, job="nightly", instance="all")
    assert everyone[("drkit_log_backlog_segments", (("source", "cache-replica"),))] == 0


def test_unreachable_gateway_is_a_clear_error_with_exit_10(renv: RedisEnv) -> None:  # noqa: F811
    port = free_port()  # nothing listens there
    r = renv.drkit("metrics", "cache", "--push", f"http://127.0.0.1:{port}", check=False)
    assert r.returncode == 10, (r.returncode, r.stderr)
    assert f"cannot push the metrics to the Pushgateway at http://127.0.0.1:{port}" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    r = renv.drkit("metrics", "--push", "http://bob:hunter2@127.0.0.1:9091", check=False)
    assert r.returncode == 2 and "DRKIT_PUSHGATEWAY_USER" in r.stderr and "hunter2" not in r.stderr, r.stderr


def test_basic_auth_comes_from_the_environment(renv: RedisEnv) -> None:  # noqa: F811
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

    secret = "gw-" + os.urandom(6).hex()
    hashed = crypt.crypt(secret, crypt.mksalt(crypt.METHOD_BLOWFISH))
    assert hashed.startswith("$2")
    with pushgateway(renv.root, {"basic_auth_users": {"drkit": hashed}}) as url:
        r = renv.drkit("metrics", "cache", "--push", url, check=False)
        assert r.returncode == 10 and "HTTP 401" in r.stderr and "DRKIT_PUSHGATEWAY_PASSWORD" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        env = {"DRKIT_PUSHGATEWAY_USER": "drkit", "DRKIT_PUSHGATEWAY_PASSWORD": secret}
        r = renv.drkit("metrics", "cache", "--push", url, env=env)
        assert secret not in r.stdout + r.stderr
        got = drkit_samples(samples(scrape(url, ("drkit", secret))), job="drkit", instance="cache")
        assert ("drkit_backup_read_bytes_total", (("source", "cache"),)) in got
