"""Benchmark: drkit Redis full backup / restore against ``redis-cli --rdb`` + ``zstd -3``; follower lag.

Run as root with the drkit venv's Python:

    /opt/drkit/venv/bin/python bench/redis_backup.py                       # ~2 GB RDB, 3 rounds
    /opt/drkit/venv/bin/python bench/redis_backup.py --keys 1000000 --runs 1   # quick

Dataset: KEYS string keys ``order:N`` holding a JSON-like document (ids in hex, an amount, a
note of 12 words from a 64-word list; ~200 bytes, ~2.5-3x compressible with zstd -3), written
by a Lua script inside the server (fast, deterministic seed), plus 1% of keys with a TTL.

Per round (interleaved; ``sync`` before each; page cache warm):

- baseline backup: ``redis-cli --rdb FILE`` then ``zstd -3 -T1 FILE`` (both timed together);
- drkit ``backup cache`` (remote PSYNC mode) into a fresh local repository;
- baseline restore: ``zstd -d FILE.zst -o DIR/dump.rdb``, which leaves its output in the page
  cache; and the durable baseline: the same followed by ``sync DIR/dump.rdb``;
- drkit ``restore cache --backup ID --target-dir DIR`` (TTL-rewriting lay-down, no start), with the
  native RDB scanner when it is built (``native_rdb_scanner`` in the results says).  It ends with
  the file and its directory fsynced, so it is compared with the durable baseline;
- the same with ``--no-sync`` (no fsync: the durability of a plain ``zstd -d``), compared with
  the plain baseline;
- the same restore forced onto the pure-Python rewrite path (``DRKIT_RDB_NATIVE=0``);
- the repository read alone: the stored RDB stream fetched, decrypted, decompressed and verified
  into nothing (this script's ``--read-only``), i.e. the restore without the rewrite and the write.

Then once: ``drkit redis follow`` with 1 s slices while ``redis-benchmark -t set -P 16`` loads the
primary; the lag is the primary's replication offset minus the offset the follower has
acknowledged (= sealed in the repository), sampled every 0.25 s, and the time it takes to
catch up after the load stops.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from pg_backup import machine_facts, measure  # noqa: E402

from drkit.sandbox.redis import start_redis  # noqa: E402

DRKIT = str(Path(sys.executable).parent / "drkit")

LUA = """
local words = {'alpha','bravo','charlie','delta','echo','foxtrot','golf','hotel','india','juliet','kilo',
 'lima','mike','november','oscar','papa','quebec','romeo','sierra','tango','uniform','victor','whiskey',
 'xray','yankee','zulu','order','shipped','pending','refund','invoice','customer','priority','express',
 'warehouse','berlin','paris','madrid','lisbon','vienna','prague','oslo','dublin','rome','athens','tokyo',
 'red','green','blue','large','small','medium','cotton','steel','paper','glass','north','south','east',
 'west','monday','friday','morning','evening'}
math.randomseed(tonumber(ARGV[3]))
for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do
  local parts = {}
  for j = 1, 12 do parts[j] = words[math.random(#words)] end
  local v = string.format('{"id":%d,"sid":"%08x%08x","cust":"%08x","amount":%d.%02d,"status":"%s","note":"%s"}',
    i, math.random(0, 2147483647), math.random(0, 2147483647), math.random(0, 2147483647),
    math.random(1, 99999), math.random(0, 99), words[math.random(#words)], table.concat(parts, ' '))
  if i % 100 == 0 then
    redis.call('SET', 'order:' .. i, v, 'EX', 86400 + i % 3600)
  else
    redis.call('SET', 'order:' .. i, v)
  end
end
return 1
"""


def load(client, keys: int) -> None:
    script = client.register_script(LUA)
    step = 100_000
    for lo in range(1, keys + 1, step):
        script(args=[lo, min(lo + step - 1, keys), lo])


def median(xs: list[float]) -> float:
    return round(statistics.median(xs), 2)


def follower_lag(root: Path, cfg: Path, inst, requests: int) -> dict:
    """Lag (bytes, seconds) of the follower's acknowledged offset behind the primary under load."""
    f = subprocess.Popen([DRKIT, "--config", str(cfg), "redis", "follow", "cache", "--slice-seconds", "1"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        c = inst.client()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:  # base snapshot stored and following
            reps = [v for k, v in c.info("replication").items() if k.startswith("slave") and isinstance(v, dict)]
            if reps and all(r.get("state") == "online" for r in reps):
                break
            time.sleep(0.5)
        bench = subprocess.Popen(["redis-benchmark", "-p", str(inst.port), "-t", "set", "-n", str(requests),
                                  "-P", "16", "-r", "1000000", "-d", "100", "-q"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        samples = []
        t0 = time.monotonic()
        while bench.poll() is None:
            info = c.info("replication")
            primary = info["master_repl_offset"]
            acked = min(v["offset"] for k, v in info.items() if k.startswith("slave") and isinstance(v, dict))
            samples.append(primary - acked)
            time.sleep(0.25)
        load_s = time.monotonic() - t0
        out = bench.stdout.read() if bench.stdout else ""
        target = c.info("replication")["master_repl_offset"]
        t1 = time.monotonic()
        while True:
            info = c.info("replication")
            acked = min(v["offset"] for k, v in info.items() if k.startswith("slave") and isinstance(v, dict))
            if acked >= target or time.monotonic() - t1 > 120:
                break
            time.sleep(0.05)
        catch_up = time.monotonic() - t1
        c.close()
        rate = (target - (samples[0] if samples else 0)) / load_s if load_s else 0
        return {"load_seconds": round(load_s, 1), "redis_benchmark": out.strip().splitlines()[-1:],
                "lag_bytes_median": int(statistics.median(samples)) if samples else None,
                "lag_bytes_max": max(samples) if samples else None,
                "stream_bytes_per_s": int(rate),
                "lag_seconds_median_est": round(statistics.median(samples) / rate, 2) if samples and rate else None,
                "catch_up_after_load_s": round(catch_up, 2)}
    finally:
        f.terminate()
        f.wait(120)


def read_only(cfg: Path, backup_id: str) -> None:
    """Read the backup's RDB stream from the repository and discard it (the restore's input side)."""
    from drkit.config import load_config
    from drkit.dumpers.redis.full import STREAM
    from drkit.ops import open_repository
    from drkit.repository.reader import open_stream

    repo = open_repository(load_config(cfg))
    n, buf = 0, bytearray(1 << 22)
    with open_stream(repo, repo.get_manifest(backup_id).stream(STREAM)) as src:
        while k := src.readinto(buf):
            n += k
    print(json.dumps({"bytes": n}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=9_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/drkit-bench-redis"))
    ap.add_argument("--lag-requests", type=int, default=2_000_000)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--read-only", nargs=2, metavar=("CONFIG", "BACKUP_ID"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.read_only:
        read_only(Path(args.read_only[0]), args.read_only[1])
        return 0
    from drkit.dumpers.redis.rdb import native_available

    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    inst = start_redis(args.work / "redis", settings={"repl-backlog-size": "256mb",
                                                      "client-output-buffer-limit": "replica 0 0 0"})
    results: dict = {"machine": machine_facts(), "keys": args.keys, "native_rdb_scanner": native_available(),
                     "rounds": []}
    try:
        t = time.monotonic()
        with inst.client(socket_timeout=3600) as c:
            load(c, args.keys)
            results["dataset"] = {"load_seconds": round(time.monotonic() - t, 1), "dbsize": c.dbsize(),
                                  "used_memory_mb": round(c.info("memory")["used_memory"] / 2**20)}
        key = args.work / "master.key"
        key.write_text(secrets.token_hex(32))
        for r in range(args.runs):
            print(f"round {r + 1}/{args.runs}", flush=True)
            rd = args.work / f"r{r}"
            rd.mkdir()
            (rd / "repo").mkdir()
            cfg = rd / "drkit.yaml"
            cfg.write_text(yaml.safe_dump({"repository": {"url": f"file://{rd / 'repo'}"},
                                           "encryption": {"key_file": str(key)},
                                           "sources": {"cache": {"type": "redis", "url": inst.url}}}))
            subprocess.run([DRKIT, "--config", str(cfg), "init"], check=True, capture_output=True)
            rdb = rd / "dump.rdb"
            base = measure("redis-cli --rdb + zstd -3", ["bash", "-c",
                           f"redis-cli -p {inst.port} --rdb {rdb} >/dev/null && zstd -3 -T1 -q -f {rdb} -o {rdb}.zst"])
            dk = measure("drkit backup (psync)", [DRKIT, "--config", str(cfg), "backup", "cache", "--json"])
            backup = json.loads(dk.stdout)
            (rd / "zr").mkdir()
            zr = measure("zstd -d", ["zstd", "-d", "-q", "-f", f"{rdb}.zst", "-o", str(rd / "zr" / "dump.rdb")])
            (rd / "zr" / "dump.rdb").unlink()  # a new file, as drkit writes (not a truncated one)
            zs = measure("zstd -d + sync", ["sh", "-c", f"zstd -d -q -f {rdb}.zst -o {rd}/zr/dump.rdb && "
                                            f"sync {rd}/zr/dump.rdb"])
            dr = measure("drkit restore (dir)", [DRKIT, "--config", str(cfg), "restore", "cache", "--backup",
                                                 backup["id"], "--target-dir", str(rd / "dr"), "--json"])
            dn = measure("drkit restore (dir, --no-sync)", [DRKIT, "--config", str(cfg), "restore", "cache", "--backup",
                                                            backup["id"], "--target-dir", str(rd / "dn"), "--no-sync",
                                                            "--json"])
            ro = measure("drkit repository read only", [sys.executable, __file__, "--read-only", str(cfg), backup["id"]])
            dp = measure("drkit restore (dir, Python)", [DRKIT, "--config", str(cfg), "restore", "cache", "--backup",
                                                        backup["id"], "--target-dir", str(rd / "dp"), "--json"],
                         env={**os.environ, "DRKIT_RDB_NATIVE": "0"})
            results["rounds"].append({
                "rdb_bytes": rdb.stat().st_size, "zst_bytes": Path(f"{rdb}.zst").stat().st_size,
                "drkit_stored_bytes": backup["stored_bytes"],
                **{m.label: {"s": round(m.seconds, 2), "cpu_s": round(m.cpu_seconds, 2),
                             "peak_rss_mb": round(m.peak_rss_mb, 1), **m.extra} for m in (base, dk, zr, zs, dr, dn, ro, dp)}})
            for p in (rdb, Path(f"{rdb}.zst")):
                p.unlink()
            shutil.rmtree(rd / "zr")
            shutil.rmtree(rd / "dr")
            shutil.rmtree(rd / "dn")
            shutil.rmtree(rd / "dp")
        labels = ["redis-cli --rdb + zstd -3", "drkit backup (psync)", "zstd -d", "zstd -d + sync",
                  "drkit restore (dir)", "drkit restore (dir, --no-sync)", "drkit repository read only",
                  "drkit restore (dir, Python)"]
        summary = {lb: {"median_s": median([x[lb]["s"] for x in results["rounds"]]),
                        "median_cpu_s": median([x[lb]["cpu_s"] for x in results["rounds"]]),
                        "max_peak_rss_mb": max(x[lb]["peak_rss_mb"] for x in results["rounds"])} for lb in labels}
        summary["backup_ratio"] = round(summary["drkit backup (psync)"]["median_s"]
                                        / summary["redis-cli --rdb + zstd -3"]["median_s"], 2)
        for key, label, baseline in (
                ("restore_ratio", "drkit restore (dir)", "zstd -d + sync"),  # both durable
                ("restore_no_sync_ratio", "drkit restore (dir, --no-sync)", "zstd -d"),  # neither
                ("restore_vs_plain_zstd_ratio", "drkit restore (dir)", "zstd -d"),
                ("read_only_ratio", "drkit repository read only", "zstd -d"),
                ("python_restore_ratio", "drkit restore (dir, Python)", "zstd -d")):
            summary[key] = round(summary[label]["median_s"] / summary[baseline]["median_s"], 2)
        results["summary"] = summary
        print(json.dumps(summary, indent=1), flush=True)
        lag_cfg = args.work / "r0" / "drkit.yaml"
        results["follower_lag"] = follower_lag(args.work, lag_cfg, inst, args.lag_requests)
        print(json.dumps(results["follower_lag"], indent=1), flush=True)
    finally:
        inst.stop()
        if args.json:
            args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
