"""How long `drkit list` takes on a large catalog: 1,000 backups and 50,000 WAL records of one
PostgreSQL source, written directly into a repository (no server needed).

    /opt/drkit/venv/bin/python bench/catalog_list.py --backups 1000 --logs 50000 --runs 3 [--s3] [--seal]

Prints wall time and peak RSS of `drkit list main --json` (a fresh CLI process per run: start-up,
key unwrap and all), medians of --runs.  With --s3 the repository is on a moto server started by
the sandbox.  The objects are sealed exactly as drkit writes them; the chunk lists point at packs
that do not exist (listing reads no data).

With --seal the same repository is then sealed into log catalog objects (one per UTC day of
``pushed``, written directly from the records just generated, as issue 10 allows, the single
records deleted as forget/prune would) and `list` is measured again: "before" and "after".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from drkit.config import load_config
from drkit.dumpers.postgres.walnames import format_lsn, segment_name
from drkit.ops import open_repository
from drkit.repository import LogRecord, Manifest, StreamRef
from drkit.repository import format as fmt
from drkit.repository.manifest import iso

SEG = 16 * 1024 * 1024
DRKIT = str(Path(sys.executable).parent / "drkit")


def populate(config_path: Path, backups: int, logs: int, chunks_per_backup: int) -> None:
    repo = open_repository(load_config(config_path))
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    span = timedelta(days=30)
    step = span / logs
    per_backup = max(1, logs // backups)

    def put_log(n: int) -> None:
        name = segment_name(1, n + 2)
        at = t0 + step * n
        rec = LogRecord("main", name, StreamRef(name, SEG, os.urandom(32).hex(), [[os.urandom(32).hex(),
                        os.urandom(16).hex(), 4, 1000, SEG]]),
                        {"kind": "segment", "timeline": 1, "segment_size": SEG, "first_commit": iso(at),
                         "last_commit": iso(at + step * 0.9), "commit_times_ok": True, "commits": 10,
                         "closed_at": iso(at + step * 0.95), "segno": n + 2},
                        pushed=iso(at + step))
        key = fmt.log_key("main", name)
        repo.storage.put(key, repo._seal_json("log", key, rec.to_json()))

    def put_backup(b: int) -> None:
        start_seg = 2 + b * per_backup
        at = t0 + step * (start_seg - 2)
        bid = (at.strftime("%Y%m%dT%H%M%SZ") + f"-{b:06x}")
        chunks = [[os.urandom(32).hex(), os.urandom(16).hex(), 4 + 1000 * i, 1000, 1 << 20]
                  for i in range(chunks_per_backup)]
        md = {"start_lsn": format_lsn(start_seg * SEG + 40), "stop_lsn": format_lsn(start_seg * SEG + 400),
              "timeline": 1, "stop_time": iso(at), "segment_size": SEG, "wal_included": True,
              "stop_wal": segment_name(1, start_seg)}
        m = Manifest(bid, "main", "postgres", "full", iso(at - timedelta(minutes=1)), iso(at),
                     [StreamRef("base.tar", chunks_per_backup << 20, os.urandom(32).hex(), chunks)], md)
        repo.commit_manifest(m)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put_log, range(logs)))
        list(pool.map(put_backup, range(backups)))


def seal_directly(config_path: Path) -> dict:
    """Write the catalog objects straight from the single records (one GET each, in parallel),
    then delete the singles -- what ``seal_log_catalog(..., delete_replaced=True)`` does."""
    repo = open_repository(load_config(config_path))
    t = time.monotonic()
    res = repo.seal_log_catalog("main", before=datetime(2100, 1, 1, tzinfo=UTC), delete_replaced=True)
    return {"catalog_objects": len(res.written), "sealed": res.sealed, "seal_s": round(time.monotonic() - t, 1)}


def time_list(config_path: Path, runs: int) -> dict:
    walls, rss = [], []
    for _ in range(runs):
        t = time.monotonic()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", DRKIT, "--config", str(config_path), "list", "main",
                               "--json"], capture_output=True, text=True, check=False)
        walls.append(time.monotonic() - t)
        if proc.returncode != 0:
            raise SystemExit(f"list failed: {proc.stderr[-2000:]}")
        rss.append(int(proc.stderr.strip().splitlines()[-1]) / 1024)
        entry = json.loads(proc.stdout)[0]
    return {"wall_s": statistics.median(walls), "walls": [round(w, 2) for w in walls],
            "rss_mb": statistics.median(rss), "restore_points": len(entry["restore_points"]),
            "windows": len(entry["windows"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backups", type=int, default=1000)
    ap.add_argument("--logs", type=int, default=50000)
    ap.add_argument("--chunks", type=int, default=50, help="chunk refs per backup manifest")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--s3", action="store_true")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--seal", action="store_true", help="then seal into log catalog objects and measure again")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="drkit-bench-catalog-", dir="/var/tmp"))
    server = None
    try:
        key = root / "master.key"
        key.write_text(os.urandom(32).hex())
        repository: dict = {"url": f"file://{root / 'repo'}"}
        if args.s3:
            from drkit.sandbox.s3 import start_moto

            server = start_moto(root / "moto")
            server.create_bucket("bench")
            repository = {"url": "s3://bench/repo", "s3": {"endpoint_url": server.endpoint_url,
                                                            "region": server.region, "addressing_style": "path"}}
            os.environ.update({"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key})
        else:
            (root / "repo").mkdir()
        cfg = root / "drkit.yaml"
        cfg.write_text(yaml.safe_dump({"repository": repository, "encryption": {"key_file": str(key)},
                                       "sources": {"main": {"type": "postgres", "dsn": "host=/nonexistent"}}}))
        subprocess.run([DRKIT, "--config", str(cfg), "init"], check=True, capture_output=True)
        t = time.monotonic()
        populate(cfg, args.backups, args.logs, args.chunks)
        print(f"populated {args.backups} backups, {args.logs} log records in {time.monotonic() - t:.1f} s",
              file=sys.stderr)
        result = {"backups": args.backups, "logs": args.logs, "storage": "s3 (moto)" if args.s3 else "local",
                  **time_list(cfg, args.runs)}
        if args.seal:
            result = {"before": result, "seal": seal_directly(cfg), "after": time_list(cfg, args.runs)}
        print(json.dumps(result))
    finally:
        if server is not None:
            server.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
