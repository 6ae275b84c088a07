"""The MongoDB dumper end to end through the CLI, against the session's MongoDB-wire server
(FerretDB with an oplog, or a real mongod with ``DRKIT_MONGODB_SERVER=mongod``).

Every restore is compared with what the source held: whole collections, document by document, as
raw BSON (so types and field order count).  Each test uses its own database and source (``include``
is that database), so tests sharing the server and its oplog never see each other's data.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bson
import pymongo
import pytest
import yaml
from bson import Binary, Int64, ObjectId, Regex, Timestamp
from bson.raw_bson import RawBSONDocument
from pgenv import DRKIT, workdir

RAW = bson.CodecOptions(document_class=RawBSONDocument)


@dataclass
class MongoEnv:
    root: Path
    config: Path
    url: str
    db: str
    client: pymongo.MongoClient

    password: str | None = None  # an external server's ($DRKIT_TEST_MONGO_URL), never in a URI drkit sees

    def drkit(self, *args: str, check: bool = True, timeout: float = 300,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        if self.password and args and args[0] == "restore" and "--to" in args:
            args = (*args, "--to-password-env", PW_ENV)
        extra = {PW_ENV: self.password} if self.password else {}
        proc = subprocess.run([DRKIT, "--config", str(self.config), *args], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **extra, **(env or {})})
        if self.password:
            assert self.password not in proc.stdout + proc.stderr
        if check and proc.returncode != 0:
            raise AssertionError(f"drkit {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    @property
    def src(self) -> pymongo.database.Database:
        return self.client[self.db]

    def target(self, tag: str) -> str:
        name = f"{self.db}_{tag}"
        self.client.drop_database(name)
        return name

    def restore(self, *args: str, into: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.drkit("restore", "m", "--to", self.url, "--ns-from", f"{self.db}.*", "--ns-to", f"{into}.*",
                          *args, check=check)

    def list(self) -> dict:
        return json.loads(self.drkit("list", "m", "--json").stdout)[0]


PW_ENV = "DRKIT_TEST_MONGO_PW"


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """An external test server's URI without its user and password (drkit refuses a password in a URI)."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url, None, None
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host)), unquote(parts.username or ""), unquote(parts.password)


def snapshot(db: pymongo.database.Database) -> dict[str, list[bytes]]:
    """Every collection's documents as raw BSON, by _id order."""
    raw = db.client.get_database(db.name, codec_options=RAW)
    return {name: [d.raw for d in raw[name].find().sort("_id", 1)]
            for name in sorted(db.list_collection_names()) if not name.startswith("system.")}


@pytest.fixture
def menv(mongodb_server) -> Iterator[MongoEnv]:
    root = workdir("mongodb-dump")
    db = f"dk_{uuid.uuid4().hex[:8]}"
    key = root / "master.key"
    key.write_bytes(os.urandom(32).hex().encode())
    config = root / "drkit.yaml"
    url, user, password = split_credentials(mongodb_server.url)
    source = {"type": "mongodb", "uri": url, "include": [db], "parallel": 2}
    if password:
        source.update({"username": user, "password_env": PW_ENV})
    config.write_text(yaml.safe_dump({
        "repository": {"url": f"file://{root / 'repo'}"},
        "encryption": {"key_file": str(key)},
        "sources": {"m": source},
    }))
    client = pymongo.MongoClient(mongodb_server.url, tz_aware=True)
    env = MongoEnv(root, config, url if not password else url.replace("://", f"://{user}@", 1), db, client, password)
    env.drkit("init")
    try:
        yield env
    finally:
        for name in client.list_database_names():
            if name.startswith(db):
                client.drop_database(name)
        client.close()
        if not os.environ.get("DRKIT_KEEP_TEST_DIRS"):
            shutil.rmtree(root, ignore_errors=True)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(t: dt.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def mark() -> dt.datetime:
    """A time strictly between the writes before and after it (clock resolution of entry times: 1 ms)."""
    time.sleep(0.05)
    t = now()
    time.sleep(0.05)
    return t


# -- round trip ---------------------------------------------------------------------------------

TYPED = [
    {"_id": 1, "z": "field order z before a", "a": 1, "m": {"y": 1, "b": {"x": [1, "two", {"q": None}]}}},
    {"_id": 2, "i32": 7, "i64": Int64(7), "dbl": 7.0, "neg": -0.0, "big": Int64(2**62), "f": 1.5e300},
    {"_id": 3, "oid": ObjectId("65a1b2c3d4e5f60718293a4b"), "dt": dt.datetime(2024, 2, 29, 23, 59, 59, 999000,
                                                                              tzinfo=dt.UTC),
     "old": dt.datetime(1901, 1, 1, tzinfo=dt.UTC), "ts": Timestamp(1700000000, 5), "re": Regex("^a.*b$", "im")},
    {"_id": 4, **{f"bin{st}": Binary(b"\x00\x01\xfe\xff" * 4, st) for st in (0, 1, 2, 3, 4, 5, 6, 7, 8, 128)}},
    {"_id": 5, "s": "unicode: é ü 漢字 🎉", "empty": "", "t": True, "f": False, "n": None, "arr": [],
     "doc": {}},
    {"_id": "string-id", "v": 1},
    {"_id": ObjectId("65a1b2c3d4e5f60718293a4c"), "v": 2},
]


def test_every_type_and_field_order_round_trip(menv: MongoEnv) -> None:
    menv.src.types.insert_many(TYPED)
    menv.src.bulk.insert_many([{"_id": i, "pad": "x" * (i % 2000), "n": i} for i in range(3000)])
    before = snapshot(menv.src)
    out = json.loads(menv.drkit("backup", "m", "--json").stdout)
    assert out["metadata"]["documents"] == len(TYPED) + 3000
    into = menv.target("r")
    menv.restore(into=into)
    assert snapshot(menv.client[into]) == before  # byte for byte: types, field order, values


def test_collection_options_and_indexes_survive(menv: MongoEnv) -> None:
    db = menv.src
    db.create_collection("capped", capped=True, size=1 << 20, max=100)
    db.capped.insert_many([{"_id": i} for i in range(10)])
    db.people.create_index([("email", 1)], unique=True, name="email_u")
    db.people.create_index([("last", 1), ("first", -1)], name="name_compound")
    # Each of these where the server has it (a real mongod has all; the test server lacks some:
    # docs/mongodb.md); the restore must reproduce whatever the source holds.
    optional = [
        ([("nick", 1)], {"sparse": True, "name": "nick_sparse"}),
        ([("age", 1)], {"partialFilterExpression": {"age": {"$gt": 17}}, "name": "adults"}),
        ([("born", 1)], {"expireAfterSeconds": 3600 * 24 * 365 * 200, "name": "ttl"}),
        ([("tag", 1)], {"hidden": True, "name": "hidden_tag"}),
        ([("bio", "text")], {"name": "bio_text", "default_language": "english"}),
        ([("attrs.$**", 1)], {"name": "attrs_wildcard"}),
        ([("last", 1)], {"collation": {"locale": "fr", "strength": 2}, "name": "last_fr"}),
    ]
    made = 0
    for keys, kw in optional:
        try:
            db.people.create_index(keys, **kw)
            made += 1
        except pymongo.errors.OperationFailure as exc:
            if exc.code not in (238, 27):  # NotImplemented (27: how FerretDB refuses a text index)
                raise
    assert made >= 1
    db.people.insert_many([{"_id": i, "email": f"p{i}@x", "last": "L", "first": str(i), "age": i}
                           for i in range(30)])
    menv.drkit("backup", "m")
    into = menv.target("r")
    menv.restore(into=into)
    dst = menv.client[into]

    def indexes(d: pymongo.database.Database, coll: str) -> list[dict]:
        return sorted(({k: v for k, v in dict(i).items() if k not in ("v", "ns")} for i in d[coll].list_indexes()),
                      key=lambda i: i["name"])

    assert indexes(dst, "people") == indexes(db, "people")
    assert dst.capped.options() == db.capped.options()
    assert snapshot(dst) == snapshot(db)
    with pytest.raises(pymongo.errors.DuplicateKeyError):  # the unique index is real
        dst.people.insert_one({"email": "p1@x"})


# -- point in time ---------------------------------------------------------------------------------

def workload(db: pymongo.database.Database, marks: list[tuple[dt.datetime, dict]], steps: range) -> None:
    """Inserts, updates (operator and replacement) and deletes; after each step a mark with the
    exact expected state."""
    for step in steps:
        db.orders.insert_many([{"_id": step * 10 + k, "step": step, "qty": k} for k in range(5)])
        db.orders.update_many({"step": step - 1}, {"$inc": {"qty": 100}, "$set": {"seen": step}})
        if step >= 2:
            db.orders.delete_many({"step": step - 2, "qty": {"$gte": 103}})
            db.orders.replace_one({"_id": (step - 2) * 10}, {"replaced": step})
        db.meta.update_one({"_id": "counter"}, {"$set": {"step": step}}, upsert=True)
        marks.append((mark(), snapshot(db)))


def test_point_in_time_restores_exact_state_at_each_mark(menv: MongoEnv) -> None:
    db = menv.src
    db.orders.insert_one({"_id": -1, "seed": True})
    menv.drkit("backup", "m")
    marks: list[tuple[dt.datetime, dict]] = []
    workload(db, marks, range(4))
    menv.drkit("backup", "m", "--type", "incremental")
    workload(db, marks, range(4, 7))
    out = menv.drkit("backup", "m", "--type", "incremental", "--json")
    assert json.loads(out.stdout)["log_records"]
    listing = menv.list()
    ranges = [p for p in listing["restore_points"] if p["kind"] == "range"]
    assert ranges and ranges[-1]["needs"]["logs"]["count"] >= 2
    assert not listing["gaps"]
    for i in (0, 3, 4, len(marks) - 1):  # across the boundary between the two incrementals too
        t, expected = marks[i]
        into = menv.target(f"pit{i}")
        menv.restore("--point-in-time", iso(t), into=into)
        assert snapshot(menv.client[into]) == expected, f"mark {i}"
    into = menv.target("latest")
    menv.restore(into=into)
    assert snapshot(menv.client[into]) == snapshot(db)
    # A time before the first backup is outside the window: exit 8, nothing written.
    into = menv.target("early")
    r = menv.restore("--point-in-time", iso(marks[0][0] - dt.timedelta(hours=1)), into=into, check=False)
    assert r.returncode == 8, r.stderr
    assert "outside the recoverable window" in r.stderr
    assert into not in menv.client.list_database_names()


def test_full_backup_taken_under_writes_restores_a_consistent_state(menv: MongoEnv) -> None:
    db = menv.src
    db.seq.insert_many([{"_id": i, "pad": "p" * 500} for i in range(1, 2001)])
    db.head.insert_one({"_id": 0, "last": 2000})
    stop = threading.Event()

    def writer() -> None:
        i = 2001
        c = pymongo.MongoClient(menv.url)
        while not stop.is_set():
            c[menv.db].seq.insert_one({"_id": i, "pad": "p" * 500})
            c[menv.db].head.update_one({"_id": 0}, {"$set": {"last": i}})
            c[menv.db].seq.delete_one({"_id": i - 2000})  # a sliding window of ids
            i += 1
        c.close()

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.5)
        menv.drkit("backup", "m")
    finally:
        stop.set()
        t.join()
    into = menv.target("r")
    out = menv.restore("--json", into=into)
    assert json.loads(out.stdout)["window_entries_applied"] > 0  # writes happened during the dump
    dst = menv.client[into]
    last = dst.head.find_one({"_id": 0})["last"]
    ids = sorted(d["_id"] for d in dst.seq.find({}, {"_id": 1}))
    # Consistent at an oplog point: a contiguous window of ids ending at ``last`` (or one past it,
    # between an insert and its head update), its start deleted up to where the writer was.
    assert ids == list(range(ids[0], ids[-1] + 1)), "holes: not a state the database was ever in"
    assert ids[-1] - last in (0, 1)
    assert len(ids) in (2000, 2001)


# -- follower -------------------------------------------------------------------------------------

def start_follower(env: MongoEnv, slice_seconds: float = 1.0) -> subprocess.Popen[str]:
    return subprocess.Popen([DRKIT, "--config", str(env.config), "mongodb", "follow", "m", "--slice-seconds",
                             str(slice_seconds), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_window(env: MongoEnv, t: dt.datetime, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    entry: dict = {}
    while time.monotonic() < deadline:
        entry = env.list()
        if entry["window"] and dt.datetime.fromisoformat(entry["window"]["end"].replace("Z", "+00:00")) >= t:
            return entry
        time.sleep(0.5)
    raise AssertionError(f"the window never reached {t}: {entry}")


def test_follower_survives_sigkill_without_gap_and_holds_its_lease(menv: MongoEnv) -> None:
    db = menv.src
    db.c.insert_one({"_id": 0, "n": 0})
    menv.drkit("backup", "m")
    f = start_follower(menv)
    try:
        for i in range(1, 30):
            db.c.insert_one({"_id": i, "n": i})
            db.c.update_one({"_id": 0}, {"$inc": {"n": 1}})
        wait_window(menv, now())
        second = menv.drkit("mongodb", "follow", "m", "--duration", "2", check=False)
        assert second.returncode == 6, second.stderr
        one_shot = menv.drkit("backup", "m", "--type", "incremental", check=False)
        assert one_shot.returncode == 6 and "follow" in one_shot.stderr
        for i in range(30, 60):  # some of these are in the open slice when it dies
            db.c.insert_one({"_id": i, "n": i})
        time.sleep(0.3)
        f.send_signal(signal.SIGKILL)
        f.wait(30)
        mid = mark()
        state_mid = snapshot(db)
        for i in range(60, 90):
            db.c.insert_one({"_id": i, "n": i})
        f = start_follower(menv)  # its lease is stale at once: the pid is dead
        for i in range(90, 120):
            db.c.insert_one({"_id": i, "n": i})
            db.c.delete_one({"_id": i - 90})
        wait_window(menv, now())
    finally:
        f.send_signal(signal.SIGTERM)
        out, err = f.communicate(timeout=60)
    assert f.returncode == 0, err
    report = json.loads(out)
    assert report["slices"] >= 1
    listing = menv.list()
    assert not listing["gaps"], listing["gaps"]
    assert len(listing["oplog_chains"]) == 1, listing["oplog_chains"]
    into = menv.target("latest")
    menv.restore(into=into)
    assert snapshot(menv.client[into]) == snapshot(db)
    into = menv.target("mid")
    menv.restore("--point-in-time", iso(mid), into=into)
    assert snapshot(menv.client[into]) == state_mid


def test_idle_follower_heartbeats_keep_the_window_at_the_clock(menv: MongoEnv) -> None:
    menv.src.c.insert_one({"_id": 1})
    menv.drkit("backup", "m")
    t0 = now()
    out = menv.drkit("mongodb", "follow", "m", "--slice-seconds", "0.5", "--duration", "3", "--json")
    report = json.loads(out.stdout)
    assert report["heartbeats"] >= 1
    end = dt.datetime.fromisoformat(menv.list()["window"]["end"].replace("Z", "+00:00"))
    assert end >= t0 + dt.timedelta(seconds=1)


# -- faults ------------------------------------------------------------------------------------------

def test_rolled_over_oplog_is_detected_and_a_full_backup_is_required(menv: MongoEnv) -> None:
    db = menv.src
    db.c.insert_one({"_id": 1})
    menv.drkit("backup", "m")
    db.c.insert_one({"_id": 2})
    menv.drkit("backup", "m", "--type", "incremental")
    last = max(json.loads(menv.drkit("list", "m", "--json").stdout)[0]["oplog_chains"], key=lambda c: c["last"])
    db.c.insert_one({"_id": 3})
    # Simulate the capped oplog wrapping: drop every entry up to and including the newest captured one.
    oplog = menv.client.local["oplog.rs"]
    newest_captured = Timestamp(int(last["last"].split(".")[1]), 2**31)  # past every entry of that second
    oplog.delete_many({"ts": {"$lte": newest_captured}})
    r = menv.drkit("backup", "m", "--type", "incremental", check=False)
    assert r.returncode == 9, r.stderr
    assert "rolled over" in r.stderr and "full backup" in r.stderr
    f = menv.drkit("mongodb", "follow", "m", "--duration", "3", check=False)
    assert f.returncode == 9, f.stderr
    menv.drkit("backup", "m")  # a new full starts a new chain
    db.c.insert_one({"_id": 4})
    menv.drkit("backup", "m", "--type", "incremental")
    into = menv.target("r")
    menv.restore(into=into)
    assert snapshot(menv.client[into]) == snapshot(db)


def test_bad_inputs_fail_clearly_and_touch_nothing(menv: MongoEnv) -> None:
    db = menv.src
    db.c.insert_many([{"_id": i} for i in range(10)])
    menv.drkit("backup", "m")
    db.c.insert_one({"_id": 10})
    menv.drkit("backup", "m", "--type", "incremental")
    # A target that holds documents is refused without --drop, and nothing is written.
    into = menv.target("busy")
    menv.client[into].c.insert_one({"_id": "mine"})
    r = menv.restore(into=into, check=False)
    assert r.returncode != 0 and "--drop" in r.stderr
    assert list(menv.client[into].c.find()) == [{"_id": "mine"}]
    menv.restore("--drop", into=into)
    assert snapshot(menv.client[into]) == snapshot(db)
    # Wrong key: exit 4, target untouched.
    cfg = yaml.safe_load(menv.config.read_text())
    bad_key = menv.root / "wrong.key"
    bad_key.write_bytes(os.urandom(32).hex().encode())
    wrong = menv.root / "wrong.yaml"
    wrong.write_text(yaml.safe_dump({**cfg, "encryption": {"key_file": str(bad_key)}}))
    into = menv.target("wrongkey")
    r = subprocess.run([DRKIT, "--config", str(wrong), "restore", "m", "--to", menv.url, "--ns-from", f"{menv.db}.*",
                        "--ns-to", f"{into}.*"], capture_output=True, text=True)
    assert r.returncode == 4, r.stderr
    assert into not in menv.client.list_database_names()
    # Unreachable source and target: exit 10 naming them.
    dead = menv.root / "dead.yaml"
    dead.write_text(yaml.safe_dump({**cfg, "sources": {"m": {**cfg["sources"]["m"], "uri": "mongodb://127.0.0.1:1/",
                                                              "connect_timeout": 1}}}))
    r = subprocess.run([DRKIT, "--config", str(dead), "backup", "m"], capture_output=True, text=True)
    assert r.returncode == 10 and "127.0.0.1:1" in r.stderr, r.stderr
    r = menv.drkit("restore", "m", "--to", "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=1000", check=False)
    assert r.returncode == 10, r.stderr
    # A password in the URI is refused before anything connects.
    r = menv.drkit("restore", "m", "--to", "mongodb://u:secret@127.0.0.1:1/", check=False)
    assert r.returncode == 2 and "secret" not in r.stderr
    # A corrupt slice: the restore that needs it refuses naming it; the target stays empty.
    logs = sorted((menv.root / "repo").rglob("logs/m/*"))
    assert logs
    data = bytearray(logs[-1].read_bytes())
    data[len(data) // 2] ^= 0xFF
    logs[-1].write_bytes(bytes(data))
    into = menv.target("corrupt")
    r = menv.restore(into=into, check=False)
    assert r.returncode in (5, 9), r.stderr
    assert logs[-1].name in r.stderr or "damaged" in r.stderr
    assert into not in menv.client.list_database_names()
    v = menv.drkit("verify", check=False)
    assert v.returncode != 0 and logs[-1].name in v.stdout + v.stderr


# -- scratch servers and standalone sources ----------------------------------------------------------

def test_restore_into_a_scratch_server_in_a_directory(menv: MongoEnv) -> None:
    menv.src.c.insert_many([{"_id": i, "v": i} for i in range(100)])
    menv.drkit("backup", "m")
    before = snapshot(menv.src)
    target = menv.root / "scratch"
    out = json.loads(menv.drkit("restore", "m", "--target-dir", str(target), "--start", "--json").stdout)
    try:
        restored = pymongo.MongoClient(out["url"], directConnection=True)
        assert snapshot(restored[menv.db]) == before
        restored.close()
    finally:
        os.kill(out["pid"], signal.SIGTERM)
    # Without --start the server is stopped and its files stay; a second restore into it is refused.
    other = menv.root / "scratch2"
    out = json.loads(menv.drkit("restore", "m", "--target-dir", str(other), "--json").stdout)
    assert "url" not in out and (other / "data").is_dir()
    r = menv.drkit("restore", "m", "--target-dir", str(other), check=False)
    assert r.returncode != 0 and "not empty" in r.stderr


def test_standalone_server_gets_full_backups_and_incrementals_explain(tmp_path: Path, menv: MongoEnv) -> None:
    from drkit.sandbox.mongodb import start_mongodb

    server = start_mongodb(tmp_path / "standalone")
    try:
        c = pymongo.MongoClient(server.url)
        c.local.drop_collection("oplog.rs")  # no oplog: what a standalone mongod looks like
        c.solo.c.insert_many([{"_id": i} for i in range(20)])
        cfg = yaml.safe_load(menv.config.read_text())
        cfg["sources"]["m"] = {"type": "mongodb", "uri": server.url, "include": ["solo"]}
        menv.config.write_text(yaml.safe_dump(cfg))
        out = json.loads(menv.drkit("backup", "m", "--json").stdout)
        assert out["metadata"]["consistent"] is False and out["metadata"]["documents"] == 20
        r = menv.drkit("backup", "m", "--type", "incremental", check=False)
        assert r.returncode == 2 and "no oplog" in r.stderr
        r = menv.drkit("mongodb", "follow", "m", "--duration", "2", check=False)
        assert r.returncode == 2 and "no oplog" in r.stderr
        menv.drkit("restore", "m", "--to", server.url, "--ns-from", "solo.*", "--ns-to", "solo_r.*")
        assert snapshot(c.solo_r) == snapshot(c.solo)
        c.close()
    finally:
        server.stop()


def test_forget_is_chain_aware(menv: MongoEnv) -> None:
    db = menv.src
    db.c.insert_one({"_id": 0})
    menv.drkit("backup", "m")
    db.c.insert_one({"_id": 1})
    menv.drkit("backup", "m", "--type", "incremental")
    db.c.insert_one({"_id": 2})
    newest = json.loads(menv.drkit("backup", "m", "--json").stdout)["id"]
    db.c.insert_one({"_id": 3})
    menv.drkit("backup", "m", "--type", "incremental")
    t = mark()
    state = snapshot(db)
    db.c.insert_one({"_id": 4})
    menv.drkit("backup", "m", "--type", "incremental")
    out = json.loads(menv.drkit("forget", "m", "--keep-last", "1", "--min-fulls", "1", "--grace", "0",
                                "--json").stdout)
    listing = menv.list()
    assert [b["id"] for b in listing["backups"]] == [newest], out
    assert not listing["gaps"] and not listing["damaged"]
    slices = [c["slices"] for c in listing["oplog_chains"]]
    assert slices == [2], listing["oplog_chains"]  # the slice before the kept full went with the old full
    into = menv.target("pit")
    menv.restore("--point-in-time", iso(t), into=into)
    assert snapshot(menv.client[into]) == state
    into = menv.target("latest")
    menv.restore(into=into)
    assert snapshot(menv.client[into]) == snapshot(db)


def test_a_restore_that_fails_midway_leaves_no_half_restored_data(menv: MongoEnv) -> None:
    from drkit import ops
    from drkit.config import load_config
    from drkit.repository.format import pack_key

    db = menv.src
    db.a.insert_many([{"_id": i, "pad": "a" * 200} for i in range(500)])
    db.b.insert_many([{"_id": i, "pad": "b" * 200} for i in range(500)])
    backup = json.loads(menv.drkit("backup", "m", "--json").stdout)["id"]
    repo = ops.open_repository(load_config(menv.config))
    manifest = repo.get_manifest(backup, "m")
    chunk = manifest.stream(f"data/{menv.db}/b").chunks[-1]
    others = {c[1] for s in manifest.streams if s.name != f"data/{menv.db}/b" for c in s.chunks}
    assert chunk[1] not in others  # b's data has a pack of its own (its reader part's)
    pack = menv.root / "repo" / pack_key(chunk[1])
    data = bytearray(pack.read_bytes())
    data[int(chunk[2]) + int(chunk[3]) // 2] ^= 0x01  # inside b's last chunk: found only when read
    pack.write_bytes(bytes(data))
    into = menv.target("half")
    r = menv.restore(into=into, check=False)
    assert r.returncode == 5, r.stderr
    assert menv.client[into].list_collection_names() == []  # what it wrote is gone again


def test_follower_rides_out_a_server_restart_without_gap_or_collision(tmp_path: Path, menv: MongoEnv) -> None:
    """The connection drops (the server stops), the server comes back on the same data with its
    ts counter restarted: the follower reconnects, continues from its sealed position, and the
    slices after the restart carry a new epoch, so no name collides."""
    from drkit.sandbox.mongodb import start_mongodb

    # Always a local server (also with DRKIT_TEST_MONGO_URL): the test restarts it.
    server = start_mongodb(tmp_path / "restarting")
    server_url = server.url
    try:
        cfg = yaml.safe_load(menv.config.read_text())
        cfg["sources"]["m"] = {"type": "mongodb", "uri": server_url, "include": ["rs"]}
        menv.config.write_text(yaml.safe_dump(cfg))
        c = pymongo.MongoClient(server_url, serverSelectionTimeoutMS=30000)
        c.rs.c.insert_many([{"_id": i} for i in range(10)])
        menv.drkit("backup", "m")
        f = start_follower(menv)
        try:
            for i in range(10, 30):
                c.rs.c.insert_one({"_id": i})
            wait_window(menv, now())
            server.stop()
            time.sleep(2)  # the follower sees the dropped connection and retries
            server = start_mongodb(tmp_path / "restarting", port=server.port)
            for i in range(30, 50):
                c.rs.c.insert_one({"_id": i})
                c.rs.c.update_one({"_id": i - 30}, {"$set": {"after_restart": True}})
            wait_window(menv, now(), timeout=90)
        finally:
            f.send_signal(signal.SIGTERM)
            out, err = f.communicate(timeout=60)
        assert f.returncode == 0, err
        assert json.loads(out)["reconnects"] >= 1  # it noticed the new incarnation and started over
        listing = menv.list()
        assert not listing["gaps"], listing["gaps"]
        epochs = {name.split(".")[0] for ch in listing["oplog_chains"] for name in (ch["first"], ch["last"])}
        assert len(epochs) == 2, listing["oplog_chains"]  # one before, one after the restart
        menv.drkit("restore", "m", "--to", server_url, "--ns-from", "rs.*", "--ns-to", "rs_r.*")
        assert snapshot(c.rs_r) == snapshot(c.rs)
        c.close()
    finally:
        server.stop()
