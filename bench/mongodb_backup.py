"""Benchmark: drkit MongoDB full backup / restore against a pymongo + zstd floor; follower lag.

Run with the drkit venv's Python (the MongoDB-wire server is the sandbox's: FerretDB on SQLite,
or a real mongod with ``DRKIT_MONGODB_SERVER=mongod``):

    /opt/drkit/venv/bin/python bench/mongodb_backup.py --runs 3 --json /var/tmp/bench-mongo.json
    /opt/drkit/venv/bin/python bench/mongodb_backup.py --size-mb 1024 --runs 3     # >= 1 GB
    /opt/drkit/venv/bin/python bench/mongodb_backup.py --size-mb 20 --runs 1 --follow-seconds 10  # quick

Dataset (deterministic, seeded): database ``bench`` with four collections, BSON sizes by share of
the bytes: ``orders`` (~55 %, ~1 KB documents: ObjectId, int32/int64/double, datetimes, a
nested address, an array of line items, free text, a bool, a null; the amount is a Decimal128 on
a real mongod, int64 cents on FerretDB, which lacks Decimal128), ``events`` (~20 %, ~0.6 KB: a
timestamp, small binaries, tags), ``profiles`` (~15 %, ~2-3 KB of text and nested settings) and ``attachments`` (~10 %, 50 KB - 1 MB: a binary payload, half random bytes
and half text, so it compresses like real attachments), plus two secondary indexes.  A second,
smaller database ``bench_small`` (``--small-mb``, same recipe) is backed up once per round too:
the drkit peak RSS of both sizes shows whether memory grows with the collection.

Per round (``sync`` before each measurement, page cache warm, the server's CPU seconds counted
separately from the tool's own):

- drkit ``backup bench`` (full) into a fresh local repository (the CLI, a subprocess);
- the floor backup: this script's ``--floor-backup`` mode, a subprocess: per collection,
  ``find()`` as raw BSON (``RawBSONDocument``, no decoding) into a ``zstandard`` level-3 stream
  writer, ``parallel`` collections at once (the same parallelism as drkit's source);
- drkit ``restore bench --backup ID --to URI --ns-from 'bench.*' --ns-to 'bench_r.*'``;
- the floor restore (``--floor-restore``): the files read back through a ``zstandard`` stream
  reader, ``insert_many`` of the raw documents in batches, the source's indexes created after;
- after each restore the target database is checked against the source: per collection the
  count and a SHA-256 over the raw BSON of all documents in ``_id`` order; a mismatch fails the
  benchmark.  The target is dropped before the next restore.
- drkit ``backup bench_small`` (full) into a fresh repository (peak RSS of the small size).

mongodump/mongorestore are the baseline the issue asks for when mongo-tools builds from the Go
module proxy; ``--mongodump-bin DIR`` runs them too when they are there (``DIR/mongodump``,
``DIR/mongorestore``: ``mongodump --archive | zstd -3`` and ``zstd -d | mongorestore --archive``).

Then once (unless ``--follow-seconds 0``): a full backup of a small database ``bench_lag``, then
``drkit mongodb follow lag --slice-seconds 1`` while a thread inserts ``--write-rate`` documents
per second; another thread runs ``drkit list lag --json`` in a loop.  A write's lag is the time
from its acknowledged commit until the end of the first ``list`` whose ``newest_safe_time`` is
past it (an upper bound: it includes the ``list`` command's own run time, reported as well).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).parent))
import pg_backup  # noqa: E402
from pg_backup import Measure, measure  # noqa: E402

DRKIT = str(Path(sys.executable).parent / "drkit")
MB = 1024 * 1024
DB, SMALL_DB, LAG_DB = "bench", "bench_small", "bench_lag"
DECIMAL128 = False  # FerretDB v1 has no Decimal128 (it drops the connection); a real mongod does
SHARES = {"orders": 0.55, "events": 0.20, "profiles": 0.15, "attachments": 0.10}
WORDS = ("order shipped pending refund invoice customer priority express warehouse berlin paris madrid "
         "lisbon vienna prague oslo dublin rome athens tokyo red green blue large small medium cotton steel "
         "paper glass north south east west monday friday morning evening delivery package return "
         "discount account payment card transfer receipt support ticket urgent normal review rating "
         "excellent poor average quality broken missing replaced").split()


# -- dataset ----------------------------------------------------------------------------------

def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def make_doc(coll: str, i: int, rng: random.Random) -> dict[str, Any]:
    from bson import Binary, Decimal128, Int64, ObjectId

    base = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    when = base + dt.timedelta(seconds=rng.randrange(0, 60_000_000), milliseconds=rng.randrange(1000))
    if coll == "orders":
        return {"_id": ObjectId(), "n": i, "customer": Int64(rng.randrange(1, 10**12)),
                "status": rng.choice(["new", "paid", "shipped", "delivered", "cancelled"]),
                "total": (Decimal128(f"{rng.randrange(1, 10**6)}.{rng.randrange(100):02d}") if DECIMAL128
                          else Int64(rng.randrange(1, 10**8))),  # cents where the server lacks Decimal128
                "weight": rng.random() * 40, "qty": rng.randrange(1, 50), "created": when,
                "updated": when + dt.timedelta(minutes=rng.randrange(1, 10000)),
                "gift": rng.random() < 0.1, "coupon": None,
                "address": {"street": f"{rng.randrange(1, 999)} {_text(rng, 2)} st", "city": rng.choice(WORDS),
                            "zip": f"{rng.randrange(10000, 99999)}", "geo": [rng.uniform(-90, 90),
                                                                           rng.uniform(-180, 180)]},
                "items": [{"sku": f"{rng.getrandbits(40):010x}", "q": rng.randrange(1, 9),
                           "price": round(rng.random() * 300, 2)} for _ in range(rng.randrange(1, 8))],
                "session": f"{rng.getrandbits(128):032x}", "note": _text(rng, rng.randrange(20, 110))}
    if coll == "events":
        return {"_id": i, "ts": when, "kind": rng.choice(["click", "view", "buy", "login", "logout"]),
                "user": f"{rng.getrandbits(64):016x}", "ip": ".".join(str(rng.randrange(256)) for _ in range(4)),
                "sig": Binary(rng.randbytes(32), 0), "uuid": Binary(rng.randbytes(16), 4),
                "tags": [rng.choice(WORDS) for _ in range(rng.randrange(0, 10))],
                "ua": f"Mozilla/5.0 ({rng.choice(['X11', 'Windows NT 10.0', 'Macintosh'])}) {_text(rng, 6)}",
                "payload": {"v": rng.randrange(2**31), "d": rng.random(), "w": _text(rng, rng.randrange(5, 60))}}
    if coll == "profiles":
        return {"_id": f"user-{i:09d}", "name": _text(rng, 2).title(), "born": when - dt.timedelta(days=9000),
                "bio": _text(rng, rng.randrange(150, 450)), "score": Int64(rng.randrange(2**40)),
                "settings": {k: {"on": rng.random() < 0.5, "level": rng.randrange(10), "label": _text(rng, 3)}
                             for k in ("mail", "sms", "push", "privacy", "theme", "lang")},
                "history": [{"at": when - dt.timedelta(days=d), "what": _text(rng, 4)} for d in range(10)]}
    size = int(min(1_000_000, max(50_000, rng.lognormvariate(11.8, 0.8))))  # median ~130 KB, ≤ ~1 MB
    half = size // 2
    body = rng.randbytes(half) + _text(rng, half // 6 + 1).encode()[: size - half]
    return {"_id": ObjectId(), "n": i, "name": f"{_text(rng, 2).replace(' ', '_')}.bin", "created": when,
            "mime": "application/octet-stream", "data": Binary(body, 0), "sha1": hashlib.sha1(body).hexdigest()}


def load_database(client: Any, db: str, size_mb: float, seed: int) -> dict[str, Any]:
    """Fill ``db`` with about ``size_mb`` MB of BSON; returns per-collection counts and bytes."""
    import bson

    client.drop_database(db)
    t0 = time.monotonic()
    facts: dict[str, Any] = {}

    def fill(coll: str) -> tuple[str, int, int, list[int], int]:
        rng = random.Random(f"{seed}-{db}-{coll}")
        target = size_mb * MB * SHARES[coll]
        total = n = biggest = 0
        sizes: list[int] = []  # every 50th document's size
        batch: list[dict[str, Any]] = []
        batch_bytes = 0
        while total < target:
            doc = make_doc(coll, n, rng)
            size = len(bson.encode(doc))
            batch.append(doc)
            batch_bytes += size
            total += size
            biggest = max(biggest, size)
            if n % 50 == 0:
                sizes.append(size)
            n += 1
            if len(batch) >= 1000 or batch_bytes >= 8 * MB:
                client[db][coll].insert_many(batch, ordered=False)
                batch, batch_bytes = [], 0
        if batch:
            client[db][coll].insert_many(batch, ordered=False)
        return coll, n, total, sizes, biggest

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(fill, SHARES))
    client[db]["orders"].create_index([("customer", 1), ("created", -1)], name="customer_created")
    client[db]["events"].create_index([("ts", 1)], name="ts")
    for coll, n, total, sizes, biggest in results:
        facts[coll] = {"documents": n, "bson_bytes": total, "median_doc_bytes": int(statistics.median(sizes)),
                       "max_doc_bytes": biggest}
    docs = sum(f["documents"] for f in facts.values())
    size = sum(f["bson_bytes"] for f in facts.values())
    sample = [x for r in results for x in r[3]]
    return {"database": db, "collections": facts, "documents": docs, "bson_bytes": size,
            "median_doc_bytes": int(statistics.median(sample)),
            "bson_mb": round(size / MB, 1), "load_seconds": round(time.monotonic() - t0, 1)}


def fingerprint(client: Any, db: str) -> dict[str, dict[str, Any]]:
    """Per collection: document count and SHA-256 of the raw BSON of all documents in ``_id`` order."""
    from bson.codec_options import CodecOptions
    from bson.raw_bson import RawBSONDocument

    raw = client.get_database(db, codec_options=CodecOptions(document_class=RawBSONDocument))
    out = {}
    for name in sorted(raw.list_collection_names()):
        if name.startswith("system."):
            continue
        h = hashlib.sha256()
        n = 0
        for doc in raw[name].find().sort("_id", 1).batch_size(1000):
            h.update(doc.raw)
            n += 1
        out[name] = {"count": n, "sha256": h.hexdigest()}
    return out


def check_restored(client: Any, expected: dict[str, dict[str, Any]], db: str, label: str) -> None:
    got = fingerprint(client, db)
    if got != expected:
        diff = {k: (expected.get(k), got.get(k)) for k in sorted(set(expected) | set(got))
                if expected.get(k) != got.get(k)}
        raise SystemExit(f"FAILED: {label} restored wrong data into {db}: {json.dumps(diff, indent=1)}")
    print(f"  {label}: restored {db} verified ({sum(v['count'] for v in got.values())} documents, "
          f"{len(got)} collections: counts + SHA-256 of the raw BSON in _id order)", flush=True)


# -- the floor (a subprocess of this script) --------------------------------------------------

def _read_exact(fh: Any, n: int) -> bytes:
    parts, left = [], n
    while left:
        block = fh.read(left)
        if not block:
            break
        parts.append(block)
        left -= len(block)
    return b"".join(parts)


def floor_backup(uri: str, db: str, out: Path, parallel: int) -> None:
    import pymongo
    import zstandard
    from bson.codec_options import CodecOptions
    from bson.raw_bson import RawBSONDocument

    out.mkdir(parents=True, exist_ok=True)
    client = pymongo.MongoClient(uri, directConnection=True)
    raw = client.get_database(db, codec_options=CodecOptions(document_class=RawBSONDocument))
    names = [n for n in raw.list_collection_names() if not n.startswith("system.")]
    meta = {n: [v for k, v in raw[n].index_information().items() if k != "_id_"] for n in names}
    (out / "indexes.json").write_text(json.dumps({n: [{"key": i["key"], **{k: v for k, v in i.items()
                                                                           if k not in ("key", "v", "ns")}}
                                                      for i in ix] for n, ix in meta.items()}, default=str))

    def dump(name: str) -> None:
        cctx = zstandard.ZstdCompressor(level=3)
        with open(out / f"{name}.bson.zst", "wb") as fh, cctx.stream_writer(fh) as w:
            for doc in raw[name].find().batch_size(1000):
                w.write(doc.raw)

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(dump, names))


def floor_restore(uri: str, db: str, src: Path, parallel: int) -> None:
    import pymongo
    import zstandard
    from bson.raw_bson import RawBSONDocument

    client = pymongo.MongoClient(uri, directConnection=True)
    indexes = json.loads((src / "indexes.json").read_text())

    def load(path: Path) -> None:
        name = path.name.removesuffix(".bson.zst")
        coll = client[db][name]
        batch: list[RawBSONDocument] = []
        size = 0
        with open(path, "rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh) as r:
            while True:
                head = _read_exact(r, 4)
                if not head:
                    break
                n = int.from_bytes(head, "little")
                batch.append(RawBSONDocument(head + _read_exact(r, n - 4)))
                size += n
                if len(batch) >= 1000 or size >= 8 * MB:
                    coll.insert_many(batch)
                    batch, size = [], 0
        if batch:
            coll.insert_many(batch)
        for ix in indexes.get(name, []):
            coll.create_index([(k, v) for k, v in ix.pop("key")], **ix)

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(load, sorted(src.glob("*.bson.zst"))))


# -- helpers -----------------------------------------------------------------------------------

def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (the server's, outside the tool's tree)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(label: str, argv: list[str], server_pid: int, bson_bytes: int, docs: int) -> dict[str, Any]:
    c0 = cpu_of(server_pid)
    m: Measure = measure(label, argv)
    server_cpu = cpu_of(server_pid) - c0
    return {"label": label, "seconds": round(m.seconds, 2), "cpu_seconds": round(m.cpu_seconds, 2),
            "server_cpu_seconds": round(server_cpu, 2), "peak_rss_mb": round(m.peak_rss_mb, 1),
            "docs_per_s": round(docs / m.seconds), "mb_per_s": round(bson_bytes / MB / m.seconds, 1),
            "other_cpu_s": m.extra.get("other_cpu_s"), "stdout": m.stdout[-2000:]}


def write_config(path: Path, root: Path, uri: str, parallel: int) -> None:
    path.write_text(yaml.safe_dump({
        "repository": {"url": f"file://{root / 'repo'}"},
        "encryption": {"key_file": str(root / "master.key")},
        "sources": {DB: {"type": "mongodb", "uri": uri, "include": [DB], "parallel": parallel},
                    SMALL_DB: {"type": "mongodb", "uri": uri, "include": [SMALL_DB], "parallel": parallel},
                    "lag": {"type": "mongodb", "uri": uri, "include": [LAG_DB], "parallel": parallel,
                            "slice_seconds": 1}},
    }))


def fresh_repo(root: Path, cfg: Path) -> None:
    shutil.rmtree(root / "repo", ignore_errors=True)
    subprocess.run([DRKIT, "--config", str(cfg), "init"], check=True, capture_output=True)


def du_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def median(xs: list[float]) -> float:
    return round(statistics.median(xs), 2)


def follower_lag(root: Path, cfg: Path, client: Any, seconds: float, rate: float) -> dict[str, Any]:
    client.drop_database(LAG_DB)
    client[LAG_DB]["w"].insert_many([{"_id": -i, "seed": True} for i in range(1, 101)])
    fresh_repo(root, cfg)
    subprocess.run([DRKIT, "--config", str(cfg), "backup", "lag"], check=True, capture_output=True)
    log = open(root / "follow.log", "wb")  # noqa: SIM115
    f = subprocess.Popen([DRKIT, "--config", str(cfg), "mongodb", "follow", "lag", "--slice-seconds", "1"],
                         stdout=log, stderr=subprocess.STDOUT)
    commits: list[dt.datetime] = []
    polls: list[tuple[dt.datetime, float, dt.datetime | None]] = []  # (end, list duration, newest safe)
    stop_writes, stop_polls = threading.Event(), threading.Event()

    def writer() -> None:
        rng = random.Random(7)
        i = 0
        t_next = time.monotonic()
        while not stop_writes.is_set():
            client[LAG_DB]["w"].insert_one(make_doc("orders", i, rng) | {"_id": i})
            commits.append(dt.datetime.now(dt.UTC))
            i += 1
            t_next += 1.0 / rate
            time.sleep(max(0.0, t_next - time.monotonic()))

    def poller() -> None:
        while not stop_polls.is_set():
            t0 = time.monotonic()
            p = subprocess.run([DRKIT, "--config", str(cfg), "list", "lag", "--json"], capture_output=True,
                               text=True)
            end = dt.datetime.now(dt.UTC)
            nst = None
            if p.returncode == 0:
                v = json.loads(p.stdout)[0].get("newest_safe_time")
                nst = dt.datetime.fromisoformat(v.replace("Z", "+00:00")) if v else None
            polls.append((end, time.monotonic() - t0, nst))

    try:
        time.sleep(3.0)  # the follower is up and tailing
        if f.poll() is not None:
            raise SystemExit(f"drkit mongodb follow exited {f.returncode}: {(root / 'follow.log').read_text()}")
        threads = [threading.Thread(target=writer), threading.Thread(target=poller)]
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop_writes.set()
        threads[0].join()
        last = commits[-1]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (polls and polls[-1][2] and polls[-1][2] >= last):
            time.sleep(0.2)
        stop_polls.set()
        threads[1].join()
    finally:
        f.terminate()
        try:
            f.wait(30)
        except subprocess.TimeoutExpired:
            f.kill()
            f.wait()
        log.close()
    lags, unseen = [], 0
    for c in commits:
        seen = next((end for end, _, nst in polls if nst is not None and nst >= c and end >= c), None)
        if seen is None:
            unseen += 1
        else:
            lags.append((seen - c).total_seconds())
    durations = [d for _, d, _ in polls]
    return {"writes": len(commits), "write_rate_per_s": rate, "load_seconds": seconds, "polls": len(polls),
            "not_seen_within_60s": unseen, "oplog_probe_s_after": oplog_probe(client),
            "lag_median_s": round(statistics.median(lags), 2) if lags else None,
            "lag_p90_s": round(statistics.quantiles(lags, n=10)[-1], 2) if len(lags) > 10 else None,
            "lag_max_s": round(max(lags), 2) if lags else None,
            "list_seconds_median": round(statistics.median(durations), 2) if durations else None,
            "follower_exit": f.returncode}


def oplog_probe(client: Any) -> float:
    """Seconds the server takes to return its newest oplog entry (what a full backup asks twice)."""
    t0 = time.monotonic()
    next(iter(client.local["oplog.rs"].find().sort("$natural", -1).limit(1)), None)
    return round(time.monotonic() - t0, 2)


def fresh_oplog(client: Any, size: int) -> None:
    """FerretDB only: an empty oplog, so the lag test does not pay for scanning the load's entries."""
    client.local.drop_collection("oplog.rs")
    client.local.create_collection("oplog.rs", capped=True, size=size)


def machine_facts(server_kind: str, binary: str) -> dict[str, Any]:
    model = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        mem_kb = next(int(line.split()[1]) for line in fh if line.startswith("MemTotal:"))
    import pymongo
    import zstandard

    import drkit

    src = Path(drkit.__file__).resolve().parent
    commit = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu_model": model, "mem_gb": round(mem_kb / 1024 / 1024, 1),
            "kernel": platform.release(), "python": platform.python_version(), "pymongo": pymongo.version,
            "zstandard": zstandard.__version__, "server": server_kind, "server_binary": binary,
            "drkit_commit": commit}


# -- main --------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=80, help="BSON size of the main data set (default 80)")
    ap.add_argument("--oplog-mb", type=float, default=16, help="the FerretDB oplog's capped size (default 16)")
    ap.add_argument("--small-mb", type=float, default=None, help="the small data set (default size/4)")
    ap.add_argument("--runs", type=int, default=3, help="rounds (medians are reported)")
    ap.add_argument("--parallel", type=int, default=2, help="collections at once (drkit and the floor)")
    ap.add_argument("--follow-seconds", type=float, default=60, help="write load for the lag test (0: skip)")
    ap.add_argument("--write-rate", type=float, default=50, help="writes per second during the lag test")
    ap.add_argument("--profile", action="store_true", help="also profile one drkit backup and restore")
    ap.add_argument("--mongodump-bin", default=None, help="a directory with mongodump and mongorestore")
    ap.add_argument("--workdir", default="/var/tmp", help="parent of the work directory")
    ap.add_argument("--idle-wait", type=float, default=30.0, help="wait up to S s for an idle machine")
    ap.add_argument("--json", default=None, help="write all results to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--floor-backup", nargs=3, metavar=("URI", "DB", "DIR"), help=argparse.SUPPRESS)
    ap.add_argument("--floor-restore", nargs=3, metavar=("URI", "DB", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.floor_backup:
        floor_backup(args.floor_backup[0], args.floor_backup[1], Path(args.floor_backup[2]), args.parallel)
        return 0
    if args.floor_restore:
        floor_restore(args.floor_restore[0], args.floor_restore[1], Path(args.floor_restore[2]), args.parallel)
        return 0

    from drkit.sandbox.mongodb import start_mongodb

    pg_backup.IDLE_WAIT_MAX = args.idle_wait
    small_mb = args.small_mb or args.size_mb / 4
    root = Path(args.workdir) / f"drkit-bench-mongo-{os.getpid()}"
    root.mkdir(parents=True)
    (root / "master.key").write_bytes(os.urandom(32).hex().encode())
    t_start = time.monotonic()
    inst = start_mongodb(root / "server", oplog_size=int(args.oplog_mb * MB))
    global DECIMAL128
    DECIMAL128 = inst.kind == "mongod"
    results: dict[str, Any] = {"args": vars(args), "rounds": []}
    try:
        results["machine"] = machine_facts(inst.kind, str(inst.binary))
        print(f"server: {inst.kind} at {inst.url}; loading {args.size_mb} MB + {small_mb} MB ...", flush=True)
        client = inst.client()
        cfg = root / "drkit.yaml"
        write_config(cfg, root, inst.url, args.parallel)
        results["dataset"] = load_database(client, DB, args.size_mb, 1)
        results["dataset_small"] = load_database(client, SMALL_DB, small_mb, 2)
        print(json.dumps({k: results[k] for k in ("dataset", "dataset_small")}, indent=1), flush=True)
        expected = fingerprint(client, DB)
        data = results["dataset"]
        nbytes, ndocs = data["bson_bytes"], data["documents"]
        me = [sys.executable, str(Path(__file__).resolve()), "--parallel", str(args.parallel)]
        drk = [DRKIT, "--config", str(cfg)]
        floor_dir = root / "floor"
        tools = Path(args.mongodump_bin) if args.mongodump_bin else None
        for rnd in range(args.runs):
            print(f"round {rnd + 1}/{args.runs}", flush=True)
            r: dict[str, Any] = {}
            fresh_repo(root, cfg)
            r["oplog_probe_s"] = oplog_probe(client)
            r["drkit_backup"] = timed("drkit backup", [*drk, "backup", DB, "--json"], inst.pid, nbytes, ndocs)
            backup_id = json.loads(r["drkit_backup"]["stdout"])["id"]
            r["drkit_stored_mb"] = round(du_bytes(root / "repo") / MB, 1)
            shutil.rmtree(floor_dir, ignore_errors=True)
            r["floor_backup"] = timed("floor backup", [*me, "--floor-backup", inst.url, DB, str(floor_dir)],
                                      inst.pid, nbytes, ndocs)
            r["floor_stored_mb"] = round(du_bytes(floor_dir) / MB, 1)
            if tools:
                arch = root / "dump.archive.zst"
                r["mongodump"] = timed("mongodump | zstd -3", ["sh", "-c", f"{tools}/mongodump --uri '{inst.url}' "
                                       f"--db {DB} --archive | zstd -3 -q -o {arch} -f"], inst.pid, nbytes, ndocs)
            client.drop_database(f"{DB}_r")
            r["drkit_restore"] = timed("drkit restore", [*drk, "restore", DB, "--backup", backup_id, "--to", inst.url,
                                                         "--ns-from", f"{DB}.*", "--ns-to", f"{DB}_r.*"],
                                       inst.pid, nbytes, ndocs)
            check_restored(client, expected, f"{DB}_r", "drkit restore")
            client.drop_database(f"{DB}_r")
            r["floor_restore"] = timed("floor restore", [*me, "--floor-restore", inst.url, f"{DB}_r",
                                                         str(floor_dir)], inst.pid, nbytes, ndocs)
            check_restored(client, expected, f"{DB}_r", "floor restore")
            client.drop_database(f"{DB}_r")
            if tools:
                r["mongorestore"] = timed("zstd -d | mongorestore", ["sh", "-c", f"zstd -d -c {arch} | "
                                          f"{tools}/mongorestore --uri '{inst.url}' --archive "
                                          f"--nsFrom '{DB}.*' --nsTo '{DB}_r.*'"], inst.pid, nbytes, ndocs)
                check_restored(client, expected, f"{DB}_r", "mongorestore")
                client.drop_database(f"{DB}_r")
            fresh_repo(root, cfg)
            small = results["dataset_small"]
            r["drkit_backup_small"] = timed("drkit backup (small)", [*drk, "backup", SMALL_DB, "--json"], inst.pid,
                                            small["bson_bytes"], small["documents"])
            for v in r.values():
                if isinstance(v, dict):
                    v.pop("stdout", None)
            r["backup_ratio"] = round(r["drkit_backup"]["seconds"] / r["floor_backup"]["seconds"], 2)
            r["restore_ratio"] = round(r["drkit_restore"]["seconds"] / r["floor_restore"]["seconds"], 2)
            print(f"  ratios this round: backup {r['backup_ratio']}x, restore {r['restore_ratio']}x", flush=True)
            results["rounds"].append(r)
        if args.profile:
            fresh_repo(root, cfg)
            prof = [sys.executable, str(Path(__file__).parent / "profile_drkit.py")]
            subprocess.run([*prof, "--out", str(root / "prof-backup.txt"), "--", "--config", str(cfg), "backup",
                            DB], check=True, capture_output=True)
            bid = json.loads(subprocess.run([*drk, "list", DB, "--json"], check=True, capture_output=True,
                                            text=True).stdout)[0]["backups"][-1]["id"]
            client.drop_database(f"{DB}_r")
            subprocess.run([*prof, "--out", str(root / "prof-restore.txt"), "--", "--config", str(cfg), "restore",
                            DB, "--backup", bid, "--to", inst.url, "--ns-from", f"{DB}.*", "--ns-to", f"{DB}_r.*"],
                           check=True, capture_output=True)
            client.drop_database(f"{DB}_r")
            results["profile"] = {"backup": (root / "prof-backup.txt").read_text(),
                                  "restore": (root / "prof-restore.txt").read_text()}
            print(f"profiles: {root / 'prof-backup.txt'} {root / 'prof-restore.txt'}", flush=True)
        if args.follow_seconds > 0:
            print("follower lag ...", flush=True)
            if inst.kind == "ferretdb":
                fresh_oplog(client, int(args.oplog_mb * MB))
            results["follow"] = follower_lag(root, cfg, client, args.follow_seconds, args.write_rate)
        results["summary"] = summarize(results)
        results["total_seconds"] = round(time.monotonic() - t_start, 1)
        client.close()
    finally:
        inst.stop()
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(results["summary"], indent=1))
    print(f"total {results['total_seconds']} s")
    return 0


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    rounds = results["rounds"]
    out: dict[str, Any] = {}
    for key in ("drkit_backup", "floor_backup", "mongodump", "drkit_restore", "floor_restore", "mongorestore",
                "drkit_backup_small"):
        ms = [r[key] for r in rounds if key in r]
        if not ms:
            continue
        out[key] = {f: median([m[f] for m in ms]) for f in ("seconds", "cpu_seconds", "server_cpu_seconds",
                                                             "docs_per_s", "mb_per_s")}
        out[key]["runs_s"] = [m["seconds"] for m in ms]
        out[key]["peak_rss_mb"] = [m["peak_rss_mb"] for m in ms]
    out["backup_ratio_of_medians"] = round(out["drkit_backup"]["seconds"] / out["floor_backup"]["seconds"], 2)
    out["restore_ratio_of_medians"] = round(out["drkit_restore"]["seconds"] / out["floor_restore"]["seconds"], 2)
    out["backup_ratio_per_round"] = [r["backup_ratio"] for r in rounds]
    out["restore_ratio_per_round"] = [r["restore_ratio"] for r in rounds]
    out["stored_mb"] = {"drkit": [r["drkit_stored_mb"] for r in rounds], "floor": [r["floor_stored_mb"] for r in rounds]}
    if "follow" in results:
        out["follow"] = results["follow"]
    return out


if __name__ == "__main__":
    sys.exit(main())
