"""Every runbook in runbooks/ is executed: its ```sh blocks run, in order, in one bash session per
scenario, against sandbox servers, and the test checks what they did and printed.

The format the runbooks follow (so that they can never rot):

- the blocks before the first ``## A.`` heading are the set-up, run at the start of every
  scenario; ``## A. ...`` and ``## B. ...`` are the scenarios;
- a block right after the line ``<!-- setup -->`` holds the values of an incident (paths, names,
  T).  It is not run: the test exports its own values instead, and fails if such a block assigns
  a variable the test does not provide;
- a block whose first line is ``# example only`` is not run;
- every other block runs as written (``set -eu``: any failing command fails the scenario).

All three runbooks (PostgreSQL, MongoDB, Redis) are executed, both scenarios each.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bson
import pymongo
import pytest
import yaml
from pgenv import DRKIT, workdir

from drkit.sandbox.mongodb import start_mongodb
from drkit.sandbox.redis import start_redis

RUNBOOKS = Path(__file__).resolve().parents[2] / "runbooks"
RAW = bson.CodecOptions(document_class=bson.raw_bson.RawBSONDocument)
ASSIGN = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=", re.M)


@dataclass
class Block:
    section: str  # "", "A" or "B" (the top-level scenario the block is in)
    heading: str
    code: str
    setup: bool
    example: bool


def parse_runbook(path: Path) -> list[Block]:
    blocks: list[Block] = []
    section, heading, prev = "", "", ""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            m = re.match(r"## ([A-Z])\. ", line)
            section = m.group(1) if m else ("" if section == "" else "end")
        if re.match(r"#{2,4} ", line):
            heading = line
        if line.strip().startswith("```"):
            lang = line.strip()[3:].strip()
            j = i + 1
            while not lines[j].strip().startswith("```"):
                j += 1
            if lang == "sh":
                code = "\n".join(ln[len(line) - len(line.lstrip()):] for ln in lines[i + 1:j])
                blocks.append(Block(section, heading or lines[0], code, prev.strip() == "<!-- setup -->",
                                    code.lstrip().startswith("# example only")))
            i = j + 1
            prev = ""
            continue
        if line.strip():
            prev = line
        i += 1
    return blocks


def scenario_script(blocks: list[Block], scenario: str, values: dict[str, str]) -> str:
    """The bash script of one scenario: the test's values, then the set-up blocks and the scenario's."""
    chosen = [b for b in blocks if b.section in ("", scenario)]
    assert any(b.section == scenario for b in chosen), f"no scenario {scenario}"
    parts = ["set -eu"] + [f"export {k}={shlex.quote(v)}" for k, v in values.items()]
    for n, b in enumerate(chosen):
        if b.setup:
            missing = set(ASSIGN.findall(b.code)) - set(values)
            assert not missing, f"the setup block under {b.heading!r} sets {missing}, which the test does not provide"
            continue
        if b.example:
            continue
        parts.append(f"echo '@@ block {n}: {b.heading}'")
        parts.append(b.code)
    return "\n".join(parts) + "\necho '@@ done'\n"


def run_scenario(path: Path, scenario: str, values: dict[str, str], root: Path,
                 env: dict[str, str] | None = None, timeout: float = 300) -> str:
    script = root / f"{path.stem}-{scenario}.sh"
    script.write_text(scenario_script(parse_runbook(path), scenario, values))
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    script.with_suffix(".out").write_text(proc.stdout + proc.stderr)  # kept with DRKIT_KEEP_TEST_DIRS
    assert proc.returncode == 0 and "@@ done" in proc.stdout, \
        f"{path.name} scenario {scenario} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def block_output(out: str, heading_part: str) -> str:
    """The output of the block(s) under the heading containing ``heading_part``."""
    chunks = re.split(r"^@@ ", out, flags=re.M)
    found = [c.split("\n", 1)[1] for c in chunks if c.startswith("block ") and heading_part in c.split("\n", 1)[0]]
    assert found, f"no block under {heading_part!r} ran:\n{out}"
    return "".join(found)


def drkit(config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([DRKIT, "--config", str(config), *args], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"drkit {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def window_end(config: Path, source: str) -> dt.datetime | None:
    window = json.loads(drkit(config, "list", source, "--json").stdout)[0]["window"]
    end = window["end"] if window else None
    return dt.datetime.fromisoformat(end.replace("Z", "+00:00")) if end else None


def wait_window(config: Path, source: str, past: dt.datetime, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        end = window_end(config, source)
        if end is not None and end > past:
            return
        time.sleep(0.5)
    raise AssertionError(f"the window of {source} did not reach {past} within {timeout} s")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def mark() -> dt.datetime:
    """A time strictly between the writes before and after it (entry times have 1 ms resolution)."""
    time.sleep(0.05)
    t = now()
    time.sleep(0.05)
    return t


def follower(config: Path, kind: str, source: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([DRKIT, "--config", str(config), kind, "follow", source, "--slice-seconds", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_pid(pid: int, timeout: float = 30) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def stop_follower(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def make_config(root: Path, sources: dict[str, dict]) -> Path:
    key = root / "master.key"
    key.write_bytes(os.urandom(32).hex().encode())
    key.chmod(0o600)
    config = root / "drkit.yaml"
    config.write_text(yaml.safe_dump({"repository": {"url": f"file://{root / 'repo'}"},
                                      "encryption": {"key_file": str(key)}, "sources": sources}))
    drkit(config, "init")
    return config


@pytest.fixture
def root() -> Iterator[Path]:
    path = workdir("runbooks")
    yield path
    if not os.environ.get("DRKIT_KEEP_TEST_DIRS"):
        shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# The format


def test_every_runbook_has_both_scenarios_and_runnable_blocks() -> None:
    books = sorted(RUNBOOKS.glob("*.md"))
    assert {p.name for p in books} >= {"postgres-recovery.md", "mongodb-recovery.md", "redis-recovery.md"}
    for path in books:
        blocks = parse_runbook(path)
        assert {b.section for b in blocks} >= {"", "A", "B"}, path.name
        assert all(b.section != "end" for b in blocks), f"{path.name}: sh blocks after the scenarios"
        text = path.read_text()
        assert "drkit init" not in "\n".join(b.code for b in blocks), f"{path.name} runs drkit init"
        assert re.search(r"--point-in-time \$T\b", text), path.name
        for b in blocks:  # no secret on a command line: passwords come from the environment
            assert not re.search(r"-a\s+\S|--password\s", b.code), f"{path.name}: a password in argv: {b.code}"
    for name in ("postgres-recovery.md", "mongodb-recovery.md", "redis-recovery.md"):
        blocks = parse_runbook(RUNBOOKS / name)
        assert [b for b in blocks if b.setup and b.section == ""], f"{name}: no setup block in section 0"
        assert "plan restore $SRC" in (RUNBOOKS / name).read_text()


def test_parser_and_setup_check(tmp_path: Path) -> None:
    book = tmp_path / "x.md"
    book.write_text("# x\n\n<!-- setup -->\n```sh\nexport A=1\nB=2\n```\n\n```sh\necho $A$B\n```\n"
                    "## A. one\n\n```sh\n# example only\nexit 3\n```\n\n```sh\necho a-ran\n```\n"
                    "## B. two\n\n```sh\necho b-ran\n```\n")
    blocks = parse_runbook(book)
    assert [(b.section, b.setup, b.example) for b in blocks] == [
        ("", True, False), ("", False, False), ("A", False, True), ("A", False, False), ("B", False, False)]
    out = run_scenario(book, "A", {"A": "x", "B": "y"}, tmp_path)
    assert "xy" in out and "a-ran" in out and "b-ran" not in out
    with pytest.raises(AssertionError, match="does not provide"):
        scenario_script(blocks, "B", {"A": "x"})


# ------------------------------------------------------------------------------------------------
# MongoDB


def raw_docs(client: pymongo.MongoClient, db: str, coll: str) -> list[bytes]:
    return [d.raw for d in client.get_database(db, codec_options=RAW)[coll].find().sort("_id", 1)]


def mongo_values(config: Path, root: Path, db: str, uri: str) -> dict[str, str]:
    return {"DRKIT_CONFIG": str(config), "D": DRKIT, "PY": sys.executable, "SRC": "records", "DB": db,
            "COLL": "orders", "URI": uri, "NEW_URI": uri, "WORK": str(root / "work")}


def test_mongodb_runbook_scenario_a(mongodb_server, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_mongodb_dumper import split_credentials

    # An external server's credentials ($DRKIT_TEST_MONGO_URL) go where the runbook reads them
    # (MONGO_USER / MONGO_PASSWORD), never into a URI drkit sees.
    url, user, password = split_credentials(mongodb_server.url)
    source: dict = {"type": "mongodb", "uri": url}
    if password:
        monkeypatch.setenv("MONGO_USER", user or "")
        monkeypatch.setenv("MONGO_PASSWORD", password)
        source.update({"username": user, "password_env": "MONGO_PASSWORD"})
    db = f"rb_{uuid.uuid4().hex[:8]}"
    client = pymongo.MongoClient(mongodb_server.url, tz_aware=True)
    config = make_config(root, {"records": {**source, "include": [db]}})
    follow = None
    try:
        client[db].orders.insert_many([{"_id": i, "v": i, "s": "x" * (i % 7)} for i in range(100)])
        client[db].users.insert_many([{"_id": i, "name": f"u{i}"} for i in range(10)])
        drkit(config, "backup", "records")
        follow = follower(config, "mongodb", "records")
        client[db].orders.insert_many([{"_id": i, "v": i} for i in range(100, 150)])
        client[db].orders.update_many({"_id": {"$lt": 20}}, {"$set": {"v": -1}})
        t = mark()
        expected = {c: raw_docs(client, db, c) for c in ("orders", "users")}
        client[db].orders.delete_many({})  # the bad deploy
        client[db].orders.insert_one({"_id": 1000, "v": "after"})  # a write after it
        wait_window(config, "records", now())

        out = run_scenario(RUNBOOKS / "mongodb-recovery.md", "A", {**mongo_values(config, root, db, url), "T": iso(t)},
                           root)

        assert "PASSED" in block_output(out, "measure the RTO")
        assert re.search(rf"^\S+Z \S+Z d {db}\.orders x150$", block_output(out, "A2."), re.M)
        assert "predicted RTO" in block_output(out, "A3.")
        a4 = block_output(out, "A4.")
        assert re.search(rf"restored to {re.escape(iso(t)[:-1])}\d*Z from", a4) and f"{db}.orders 150\n{db}.users 10" in a4  # the scratch server
        a5 = block_output(out, "A5.")
        assert f"{db}_restored.orders 150\n{db}_restored.users 10" in a5
        assert f"{db}.orders 1\n" in a5  # production, damaged
        # A6 put the collection back: exactly the documents as of T; the damaged one is kept aside
        assert raw_docs(client, db, "orders") == expected["orders"]
        assert raw_docs(client, db, "users") == expected["users"]
        kept = [c for c in client[db].list_collection_names() if c.startswith("orders_damaged_")]
        assert len(kept) == 1 and [d["_id"] for d in client[db][kept[0]].find()] == [1000]
        assert "kept the damaged collection" in block_output(out, "A6.")
        # A7 cleaned up
        assert f"{db}_restored" not in client.list_database_names()
        assert not [p for p in (root / "work").glob("mongo-*")]
    finally:
        if follow is not None:
            stop_follower(follow)
        for name in client.list_database_names():
            if name.startswith(db):
                client.drop_database(name)
        client.close()


def test_mongodb_runbook_scenario_b(root: Path) -> None:
    old = start_mongodb(root / "old")
    new = None
    follow = None
    pid_file = root / "work" / "follow-records.pid"
    db = "records"
    try:
        client = old.client()
        client[db].orders.insert_many([{"_id": i, "v": i} for i in range(200)])
        client[db].users.insert_many([{"_id": i} for i in range(5)])
        config = make_config(root, {"records": {"type": "mongodb", "uri": old.url, "include": [db],
                                                "slice_seconds": 1}})
        drkit(config, "backup", "records")
        follow = follower(config, "mongodb", "records")
        client[db].orders.insert_many([{"_id": i, "v": i} for i in range(200, 260)])
        client[db].orders.delete_many({"_id": {"$lt": 10}})
        client[db].users.update_one({"_id": 3}, {"$set": {"admin": True}})
        expected = {c: raw_docs(client, db, c) for c in ("orders", "users")}
        client.close()
        wait_window(config, "records", mark())
        stop_follower(follow)
        old.kill()  # the replica set is lost; a new, empty one takes its address
        new = start_mongodb(root / "new", port=old.port)

        out = run_scenario(RUNBOOKS / "mongodb-recovery.md", "B", mongo_values(config, root, db, old.url), root)

        assert "last write recovered:" in block_output(out, "B2.") and "predicted RTO" in block_output(out, "B2.")
        assert f"{db}.orders 250\n{db}.users 5" in block_output(out, "B4.")
        client = new.client()
        assert {c: raw_docs(client, db, c) for c in ("orders", "users")} == expected
        client.close()
        listing = json.loads(drkit(config, "list", "records", "--json").stdout)[0]
        assert len([b for b in listing["backups"] if b["type"] == "full"]) == 2  # B5's new full
        pid = int(pid_file.read_text())
        os.kill(pid, 0)  # the restarted follower runs
        assert "window end: " in block_output(out, "B5.")
    finally:
        if pid_file.exists():
            stop_pid(int(pid_file.read_text()))
        if follow is not None:
            stop_follower(follow)
        for inst in (new, old):
            if inst is not None:
                inst.stop()


# ------------------------------------------------------------------------------------------------
# Redis


def redis_values(config: Path, root: Path, port: int) -> dict[str, str]:
    return {"DRKIT_CONFIG": str(config), "D": DRKIT, "SRC": "cache", "HOST": "127.0.0.1", "PORT": str(port),
            "PATTERN": "session:*", "WORK": str(root / "work")}


def test_redis_runbook_scenario_a(root: Path) -> None:
    primary = start_redis(root / "redis")
    follow = None
    try:
        config = make_config(root, {"cache": {"type": "redis", "url": primary.url}})
        c = primary.client()
        c.set("other:0", "base")
        follow = follower(config, "redis", "cache")
        wait_window(config, "cache", now())
        for i in range(50):
            c.set(f"session:{i}", f"s{i}")
        c.set("session:ttl", "t", ex=3600)
        c.set("other:1", "old")
        t = mark()
        expected = {k: c.get(k) for k in c.keys("session:*")}
        assert len(expected) == 51
        c.delete(*expected)  # the bad deploy
        c.set("other:1", "new")  # a write after it, which the copy-back must not undo
        wait_window(config, "cache", now())

        out = run_scenario(RUNBOOKS / "redis-recovery.md", "A", {**redis_values(config, root, primary.port),
                                                                  "T": iso(t)}, root)

        assert "PASSED" in block_output(out, "measure the RTO")
        assert "predicted RTO" in block_output(out, "A2.")
        assert re.search(rf"restored to {re.escape(iso(t)[:-1])}\d*Z keys 53 expired by then 0", block_output(out, "A3."))
        a4 = block_output(out, "A4.")
        assert "damaged keys in the copy: 51" in a4 and "db0:keys=53" in a4 and "db0:keys=2" in a4
        a5 = block_output(out, "A5.")
        assert re.search(r"^\s*51 OK$", a5, re.M) and "copied back: 51 keys" in a5
        assert {k: c.get(k) for k in c.keys("session:*")} == expected
        assert 3500 < c.ttl("session:ttl") <= 3600
        assert c.get("other:1") == b"new" and c.get("other:0") == b"base"
        assert not list((root / "work").glob("redis-*"))  # A6 stopped and removed the copy
    finally:
        if follow is not None:
            stop_follower(follow)
        primary.stop()


def test_redis_runbook_scenario_b(root: Path) -> None:
    old = start_redis(root / "old")
    new = None
    follow = None
    pid_file = root / "work" / "follow-cache.pid"
    try:
        config = make_config(root, {"cache": {"type": "redis", "url": old.url, "slice_seconds": 1}})
        c = old.client()
        for i in range(100):
            c.set(f"k:{i}", f"v{i}")
        follow = follower(config, "redis", "cache")
        wait_window(config, "cache", now())
        c.rpush("list", *range(10))
        c.set("k:0", "changed")
        c.delete("k:99")
        c.set("ttl", "x", ex=3600)
        expected = set(c.keys("*"))
        values = {k: c.get(k) for k in c.keys("*") if k != b"list"}
        wait_window(config, "cache", mark())
        stop_follower(follow)
        old.kill()  # the primary is lost; a new, empty one takes its address
        new = start_redis(root / "new", port=old.port)

        out = run_scenario(RUNBOOKS / "redis-recovery.md", "B", redis_values(config, root, old.port), root)

        assert "last write recovered:" in block_output(out, "B2.") and "predicted RTO" in block_output(out, "B2.")
        b3 = block_output(out, "B3.")
        assert "keys 101 " in b3 and "db0:keys=101" in b3
        n = new.client()
        assert set(n.keys("*")) == expected
        assert {k: n.get(k) for k in values} == values
        assert n.lrange("list", 0, -1) == [str(i).encode() for i in range(10)]
        assert 3500 < n.ttl("ttl") <= 3600
        listing = json.loads(drkit(config, "list", "cache", "--json").stdout)[0]
        assert len(listing["chains"]) == 2  # the restarted follower started a new chain on the new primary
        os.kill(int(pid_file.read_text()), 0)
        assert "window end: " in block_output(out, "B4.")
    finally:
        if pid_file.exists():
            stop_pid(int(pid_file.read_text()))
        if follow is not None:
            stop_follower(follow)
        for inst in (new, old):
            if inst is not None:
                inst.stop()


# ------------------------------------------------------------------------------------------------
# PostgreSQL


def pg_values(env, root: Path) -> dict[str, str]:  # noqa: ANN001 - a pgenv.PgEnv
    return {"DRKIT_CONFIG": str(env.config_path), "D": DRKIT, "SRC": "main", "PGBIN": str(env.pg.bin_dir),
            "PGHOST": str(env.pg.socket_dir), "PGPORT": str(env.pg.port), "PGUSER": "postgres",
            "DB": "app", "TABLE": "orders", "WORK": str(root / "work"), "NEWDIR": str(root / "newprimary"),
            "NEWPORT": str(env.pg.port)}


def _pg_orders(dsn: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute("SELECT id, item, qty FROM orders ORDER BY id").fetchall()


def _pg_setup(tag: str):  # noqa: ANN202
    import psycopg
    from pgenv import make_pg_env

    env = make_pg_env(tag)
    with env.conn() as c:
        c.execute("CREATE DATABASE app")
    app = env.pg.conninfo("app")
    with psycopg.connect(app, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id int PRIMARY KEY, item text NOT NULL, qty int CHECK (qty > 0))")
        c.execute("CREATE INDEX orders_item ON orders (item)")
        c.execute("INSERT INTO orders SELECT g, 'item ' || g, 1 + g % 5 FROM generate_series(1, 200) g")
    env.drkit("backup", "main")
    return env, app


def test_postgres_runbook_scenario_a(root: Path) -> None:
    import psycopg

    env, app = _pg_setup("rb-pg-a")
    try:
        with psycopg.connect(app, autocommit=True) as c:
            c.execute("INSERT INTO orders SELECT g, 'late ' || g, 2 FROM generate_series(201, 250) g")
            c.execute("UPDATE orders SET qty = 5 WHERE id <= 10")
        t = mark()
        expected = _pg_orders(app)
        with psycopg.connect(app, autocommit=True) as c:
            c.execute("DELETE FROM orders WHERE id > 20")  # the bad deploy
            c.execute("INSERT INTO orders VALUES (1000, 'after', 1)")  # a write after it

        out = run_scenario(RUNBOOKS / "postgres-recovery.md", "A", {**pg_values(env, root), "T": iso(t)}, root,
                           timeout=600)

        assert "PASSED" in block_output(out, "measure the RTO")
        assert "predicted RTO" in block_output(out, "A2.")
        a3 = block_output(out, "A3.")
        m = re.search(r"restored to (\S+) last commit (\S+) from ", a3)
        assert m, a3
        assert dt.datetime.fromisoformat(m.group(1)) == dt.datetime.fromisoformat(iso(t).replace("Z", "+00:00"))
        assert dt.datetime.fromisoformat(m.group(2)) <= t  # the copy's newest commit is at or before T
        a4 = block_output(out, "A4.")
        assert f"== copy, as of {iso(t)}\n250\n" in a4 and "== production now\n21\n" in a4
        assert "orders_restored in production: 250 rows" in block_output(out, "A5.")
        with psycopg.connect(app, autocommit=True) as c:
            got = c.execute("SELECT id, item, qty FROM orders_restored ORDER BY id").fetchall()
            assert got == expected  # the table as committed at T ...
            assert c.execute("SELECT count(*) FROM orders WHERE id = 1000").fetchone()[0] == 1  # ... production untouched
            idx = c.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'orders_restored'").fetchall()
            assert any("(item)" in r[0] for r in idx)  # the table's definition came along
        assert not [p for p in (root / "work").glob("pg-*")]  # A6 stopped and removed the copy
    finally:
        env.close()


def test_postgres_runbook_scenario_b(root: Path) -> None:
    import psycopg

    env, app = _pg_setup("rb-pg-b")
    newdir = root / "newprimary"
    try:
        with psycopg.connect(app, autocommit=True) as c:
            c.execute("INSERT INTO orders SELECT g, 'late ' || g, 3 FROM generate_series(201, 300) g")
        expected = _pg_orders(app)
        env.switch_and_wait_archived()
        env.pg.kill()  # the primary is lost; a new one takes its port from the backup

        out = run_scenario(RUNBOOKS / "postgres-recovery.md", "B", pg_values(env, root), root, timeout=600)

        assert "last commit recovered:" in block_output(out, "B2.") and "predicted RTO" in block_output(out, "B2.")
        assert "last commit" in block_output(out, "B3.")
        new = f"host={newdir} port={env.pg.port} user=postgres dbname=app"
        assert _pg_orders(new) == expected
        b4 = block_output(out, "B4.")
        m = re.search(r"newest archived WAL: (\w+) \(switched out (\w+)\)", b4)
        assert m and m.group(1) >= m.group(2) and m.group(2).startswith("00000002")  # the new timeline archives
        listing = json.loads(drkit(env.config_path, "list", "main", "--json").stdout)[0]
        assert listing["backups"][-1]["type"] == "full" and len(listing["backups"]) == 2
    finally:
        env.stop_datadir(newdir)
        env.close()
