"""The ``mongodb`` sandbox kind against the real server: oplog, tailing, clean stop, failures, CLI."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid

import pymongo
import pytest
from mongo_fixtures import fixture_mongodb_server  # noqa: F401  (until conftest.py imports it)
from pgenv import DRKIT, workdir
from pymongo import CursorType

from drkit.sandbox import SandboxError, port_is_free
from drkit.sandbox.mongodb import MongoInstance, find_mongod, sandbox_up, start_mongodb


def _pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] in (b"Z", b"X")


def _wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not _pid_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_insert_lands_in_oplog_and_tailing_sees_the_next_write(mongodb_server: MongoInstance) -> None:
    with mongodb_server.client() as client:
        coll = client["drkit_test"][f"c_{uuid.uuid4().hex[:8]}"]
        first = coll.insert_one({"n": 1, "s": "first"}).inserted_id
        oplog = client["local"]["oplog.rs"]
        assert oplog.options().get("capped") is True
        entry = oplog.find_one({"ns": coll.full_name, "o._id": first})
        assert entry is not None, list(oplog.find())
        assert entry["op"] == "i" and entry["o"] == {"_id": first, "n": 1, "s": "first"}
        assert {"ts", "t", "wall", "v"} <= set(entry)

        # Opened (first batch fetched) before the second write; it must deliver that write.
        # FerretDB 1.24 closes a tailable cursor whose first batch is not full: hence the filter
        # that matches the newest entry and batch_size(1) (see docs/sandbox.md).
        last = next(oplog.find().sort("$natural", -1).limit(1))["ts"]
        cursor = oplog.find({"ts": {"$gte": last}}, cursor_type=CursorType.TAILABLE_AWAIT).batch_size(1)
        cursor.max_await_time_ms(500)
        seen = [next(cursor, None)]  # a tailable cursor: None while no new entry yet
        assert seen[0] is not None and seen[0]["ts"] == last
        second = coll.insert_one({"n": 2}).inserted_id
        deadline = time.monotonic() + 20
        while not any(d and d["ns"] == coll.full_name and d["o"].get("_id") == second for d in seen):
            assert cursor.alive, "the tailable cursor died"
            assert time.monotonic() < deadline, f"second write not tailed; got {seen}"
            seen.append(next(cursor, None))
        cursor.close()
        got = [d for d in seen if d and d["o"].get("_id") == second][0]
        assert got["op"] == "i" and got["ts"] > entry["ts"]


def test_stop_leaves_no_process_and_frees_the_port_and_restart_keeps_data() -> None:
    root = workdir("mongo-stop")
    try:
        inst = start_mongodb(root)
        with inst.client() as client:
            client.keep.me.insert_one({"_id": "x"})
        inst.stop()
        assert not inst.alive()
        assert _wait_gone(inst.pid, 1), f"pid {inst.pid} still alive after stop()"
        assert port_is_free(inst.port)

        again = start_mongodb(root, port=inst.port)  # same data dir and port
        try:
            with again.client() as client:
                assert client.keep.me.find_one() == {"_id": "x"}
                assert "oplog.rs" in client.local.list_collection_names()
        finally:
            again.kill()
        assert _wait_gone(again.pid, 1) and port_is_free(again.port)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_port_taken_fails_with_the_log_tail() -> None:
    root = workdir("mongo-busy")
    holder = socket.create_server(("127.0.0.1", 0))
    try:
        port = holder.getsockname()[1]
        with pytest.raises(SandboxError) as info:
            start_mongodb(root, port=port, timeout=30)
        msg = str(info.value)
        assert "address already in use" in msg and str(root / "ferretdb.log") in msg
    finally:
        holder.close()
        shutil.rmtree(root, ignore_errors=True)
    assert not [p for p in _children() if f"-data-dir={root}" in _cmdline(p)]


def test_corrupt_sqlite_dir_fails_with_the_log_tail() -> None:
    root = workdir("mongo-corrupt")
    try:
        (root / "data").mkdir()
        (root / "data" / "broken.sqlite").write_bytes(b"not a database " * 512)
        with pytest.raises(SandboxError) as info:
            start_mongodb(root, timeout=30)
        assert "file is not a database" in str(info.value)
        assert not [p for p in _children() if f"-data-dir={root}" in _cmdline(p)]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_more_than_one_node_is_refused() -> None:
    root = workdir("mongo-nodes")
    try:
        with pytest.raises(SandboxError, match="--nodes is 1"):
            sandbox_up(root, 2)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_mongod_replica_set_of_one_or_a_clear_error() -> None:
    """With a mongod configured (DRKIT_MONGOD or PATH) the real thing; without, the error says how."""
    root = workdir("mongo-mongod")
    try:
        if find_mongod() is None:
            with pytest.raises(SandboxError, match="DRKIT_MONGOD"):
                start_mongodb(root, server="mongod")
            return
        inst = start_mongodb(root, server="mongod")
        try:
            with inst.client() as client:
                assert client.admin.command("hello")["setName"] == "rs0"
                client.t.c.insert_one({"_id": 1})
                assert client.local["oplog.rs"].find_one({"ns": "t.c", "op": "i"})["o"] == {"_id": 1}
        finally:
            inst.stop()
        assert _wait_gone(inst.pid, 1) and port_is_free(inst.port)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _children() -> list[int]:
    me = str(os.getpid())
    kids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except (OSError, ValueError):
            continue
        if entry.isdigit() and stat[stat.rfind(b")") + 2 :].split()[1].decode() == me and not _pid_gone(int(entry)):
            kids.append(int(entry))
    return kids


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _drkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DRKIT, "sandbox", *args], capture_output=True, text=True, timeout=600)


def test_cli_up_status_down() -> None:
    d = workdir("sbx-mongodb")
    up = _drkit("up", "mongodb", "--dir", str(d), "--json")
    assert up.returncode == 0, up.stderr
    state = json.loads(up.stdout)
    try:
        assert state["server"] == "ferretdb" and state["pids"] == [state["pid"]]
        assert state["url"] == f"mongodb://127.0.0.1:{state['port']}/"
        with pymongo.MongoClient(state["url"], serverSelectionTimeoutMS=5000) as client:
            assert client.admin.command("ping")["ok"] == 1
            client.t.c.insert_one({"_id": 1})
            assert client.local["oplog.rs"].find_one({"ns": "t.c", "op": "i"})["o"] == {"_id": 1}
        status = _drkit("status", str(d), "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        assert json.loads(status.stdout)["running"] is True
    finally:
        down = _drkit("down", str(d))
    assert down.returncode == 0, down.stderr
    assert _wait_gone(int(state["pid"])) and port_is_free(int(state["port"]))
    assert _drkit("status", str(d)).returncode != 0
    shutil.rmtree(d, ignore_errors=True)
