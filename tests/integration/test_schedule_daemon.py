"""``drkit schedule run``: catches up a missed run once (also after SIGKILL and restart, and with
two daemons on one repository), serves /metrics and /health, restarts a killed follower."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml
from pgenv import DRKIT
from prometheus_client.parser import text_string_to_metric_families
from test_mongodb_dumper import MongoEnv, menv  # noqa: F401 - the fixture

from drkit.proc import free_port
from drkit.repository.manifest import parse_iso


def policy(env: MongoEnv, **fields: object) -> None:
    d = env.root / "schedules"
    d.mkdir(exist_ok=True)
    (d / "p.yaml").write_text(yaml.safe_dump({"sources": ["m"], "full": "0 0 1 1 *", **fields}))


def start(env: MongoEnv, port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([DRKIT, "--config", str(env.config), "schedule", "run", "--listen", f"127.0.0.1:{port}",
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def get(port: int, path: str, timeout: float = 30) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def fulls(env: MongoEnv) -> list[dict]:
    return [b for b in env.list()["backups"] if b["type"] == "full"]


def wait_for(cond, timeout: float = 60, what: str = "") -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return err


def test_catch_up_once_across_sigkill_and_two_daemons_and_metrics(menv: MongoEnv) -> None:  # noqa: F811
    menv.src.c.insert_many([{"_id": i} for i in range(10)])
    policy(menv)
    p1, p2 = free_port(), free_port()
    a = start(menv, p1, "--no-followers")
    b = start(menv, p2, "--no-followers")  # a second daemon on the same repository
    try:
        wait_for(lambda: len(fulls(menv)) >= 1, what="the missed full")
        wait_for(lambda: json.loads(get(p1, "/health")[1])["runs"] >= 1 and
                 json.loads(get(p2, "/health")[1])["runs"] >= 1, what="both catch-ups")
        assert len(fulls(menv)) == 1  # the job lease serialised them; the second found it not due
        status, body = get(p1, "/metrics")
        assert status == 200
        values = {(s.name, tuple(sorted(s.labels.items()))): s.value
                  for fam in text_string_to_metric_families(body) for s in fam.samples}
        full = fulls(menv)[0]
        assert values[("drkit_backup_last_success_timestamp_seconds", (("source", "m"), ("type", "full")))] == \
            parse_iso(full["finished"]).timestamp()
        assert get(p1, "/health")[0] == 200
        a.send_signal(signal.SIGKILL)
        a.wait(30)
        a = start(menv, p1, "--no-followers")  # restarted after a SIGKILL: the run is not repeated
        wait_for(lambda: json.loads(get(p1, "/health")[1])["runs"] >= 1, what="the restart's catch-up")
        assert len(fulls(menv)) == 1
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                stop(proc)


def test_daemon_supervises_the_follower_of_a_continuous_policy(menv: MongoEnv) -> None:  # noqa: F811
    cfg = yaml.safe_load(menv.config.read_text())
    cfg["sources"]["m"]["slice_seconds"] = 1  # the follower seals every second
    menv.config.write_text(yaml.safe_dump(cfg))
    menv.src.c.insert_one({"_id": 1})
    menv.drkit("backup", "m")
    policy(menv, continuous=True)
    port = free_port()
    d = start(menv, port)
    try:
        def follower() -> dict:
            return json.loads(get(port, "/health")[1])["followers"].get("m", {})

        wait_for(lambda: follower().get("alive") and follower().get("pid"), what="the follower")
        first = follower()["pid"]
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: follower().get("pid") not in (None, first) and follower().get("alive"), timeout=90,
                 what="the restarted follower")
        assert follower()["exits"] >= 1
        menv.src.c.insert_one({"_id": 2})
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # the restarted follower ships it
            chains = menv.list().get("oplog_chains", [])
            if sum(c["entries"] for c in chains) >= 1:
                break
            time.sleep(1)
        else:
            raise AssertionError("the restarted follower shipped nothing")
    finally:
        stop(d)
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and p.name == str(first)]
