"""drkit end to end on the embedded default: backup -> disaster -> point-in-time restore -> verify.

Run through scripts/demo.sh (which installs everything first).  It starts a throwaway
PostgreSQL, archives its WAL into a local-disk encrypted repository, takes a full backup, keeps
writing, drops a table by "accident" and loses the server, restores to the moment just before
the drop, checks every row against what was committed, and prints the achieved RPO and RTO.
Every drkit step is the real CLI, printed as it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import psycopg
import yaml

from drkit.sandbox.postgres import start_postgres

DRKIT = str(Path(sys.executable).parent / "drkit")
RPO_TARGET_S = 15 * 60
RTO_TARGET_S = 4 * 3600


def step(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def run_drkit(config: Path, *args: str) -> str:
    cmd = [DRKIT, "--config", str(config), *args]
    print("$ drkit " + " ".join(args), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(proc.stdout + proc.stderr, file=sys.stderr)
        raise SystemExit(f"demo failed: drkit {' '.join(args)} exited {proc.returncode}")
    return proc.stdout


class Writer(threading.Thread):
    """Commits one order every ~100 ms and records each commit's server time."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.commits: list[tuple[int, datetime]] = []
        self.stop_flag = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            i = 0
            while not self.stop_flag.is_set():
                i += 1
                c.execute(
                    "INSERT INTO orders (patient_id, amount, note) VALUES (%s, %s, %s)",
                    (i % 5000 + 1, i * 1.25, f"order {i}"),
                )
                ts = c.execute("SELECT clock_timestamp()").fetchone()[0]
                self.commits.append((i, ts))
                time.sleep(0.1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--keep", action="store_true", help="keep the work directory and servers' files")
    ap.add_argument("--write-seconds", type=float, default=15.0)
    ap.add_argument("--scale", type=int, default=5, help="pgbench scale of the sample data")
    args = ap.parse_args()

    root = Path(f"/var/tmp/drkit-demo-{os.getpid()}")
    root.mkdir(parents=True)
    root.chmod(0o755)
    pg = None
    restored_dir = root / "restored"
    pg_ctl = None
    try:
        step("setting up: key, configuration, local-disk repository, throwaway PostgreSQL")
        key = root / "master.key"
        key.write_bytes(os.urandom(32).hex().encode())
        key.chmod(0o640)
        shutil.chown(key, "root", "postgres")
        repo = root / "repository"
        repo.mkdir()
        shutil.chown(repo, "postgres", "postgres")
        config = root / "drkit.yaml"
        archive_cmd = f"{DRKIT} --config {config} pg wal-push --source demo-pg %p"
        pg = start_postgres(root / "pg", archive_command=archive_cmd, archive_timeout=5)
        pg_ctl = str(pg.bin_dir / "pg_ctl")
        config.write_text(yaml.safe_dump({
            "repository": {"url": f"file://{repo}"},
            "encryption": {"key_file": str(key)},
            "sources": {"demo-pg": {"type": "postgres", "dsn": pg.dsn}},
        }))
        config.chmod(0o644)
        print(f"PostgreSQL on 127.0.0.1:{pg.port}, WAL archived by: {archive_cmd}")
        print(config.read_text())
        run_drkit(config, "init")

        step(f"loading sample data (pgbench scale {args.scale} + a patients table)")
        subprocess.run([str(pg.bin_dir / "pgbench"), "-i", "-q", "-s", str(args.scale), pg.dsn],
                       check=True, capture_output=True)
        with psycopg.connect(pg.dsn, autocommit=True) as c:
            c.execute("""CREATE TABLE patients AS SELECT g AS id, 'patient ' || g AS name,
                         jsonb_build_object('ward', g % 17, 'risk', g % 5) AS attrs,
                         now() - (g || ' minutes')::interval AS admitted
                         FROM generate_series(1, 50000) g""")
            c.execute("""CREATE TABLE orders (id bigserial PRIMARY KEY, patient_id int, amount numeric,
                         note text, at timestamptz DEFAULT clock_timestamp())""")

        step("full backup (pg_basebackup streamed into the encrypted, deduplicated repository)")
        print(run_drkit(config, "backup", "demo-pg").strip())

        step(f"the application keeps writing for {args.write_seconds:.0f} s (WAL archived continuously)")
        writer = Writer(pg.dsn)
        writer.start()
        time.sleep(args.write_seconds)
        writer.stop_flag.set()
        writer.join()
        with psycopg.connect(pg.dsn, autocommit=True) as c:
            disaster_at = c.execute("SELECT clock_timestamp()").fetchone()[0]
            step(f"DISASTER at {disaster_at.isoformat()}: someone runs DROP TABLE orders, then the server dies")
            c.execute("DROP TABLE orders")
        committed = [(i, t) for i, t in writer.commits if t <= disaster_at]
        print(f"{len(committed)} orders were committed before the disaster")
        time.sleep(7)  # the archiver ships the last segment (archive_timeout = 5 s)
        pg.kill()
        print("server killed (SIGKILL); its data directory is considered lost")

        step("what can we recover?")
        print(run_drkit(config, "list", "demo-pg").rstrip())

        step(f"point-in-time restore to just before the disaster ({disaster_at.isoformat()})")
        t0 = time.monotonic()
        out = run_drkit(config, "restore", "demo-pg", "--point-in-time", disaster_at.isoformat(),
                        "--target-dir", str(restored_dir), "--start", "--json")
        res = json.loads(out)
        print(json.dumps({k: res[k] for k in ("backup", "phases_seconds", "port")}, indent=1))

        step("checking the restored data against what was committed")
        dsn = f"host={restored_dir} port={res['port']} user=postgres dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as c:
            rows = c.execute("SELECT id, at FROM orders ORDER BY id").fetchall()
            patients = c.execute("SELECT count(*) FROM patients").fetchone()[0]
            accounts = c.execute("SELECT count(*) FROM pgbench_accounts").fetchone()[0]
        rto = time.monotonic() - t0
        ids = [r[0] for r in rows]
        expected = [i for i, _ in committed]
        ok = ids == expected and patients == 50000 and accounts == args.scale * 100000
        print(f"orders restored: {len(ids)} (expected {len(expected)}), patients: {patients}, "
              f"pgbench_accounts: {accounts}: {'MATCH' if ok else 'MISMATCH'}")
        if not ok:
            missing = sorted(set(expected) - set(ids))[:10]
            extra = sorted(set(ids) - set(expected))[:10]
            print(f"missing ids: {missing} extra ids: {extra}")

        step("deep verify of the repository (every chunk decrypted and re-hashed)")
        print(run_drkit(config, "verify").strip())

        last_restored = max((r[1] for r in rows), default=None)
        rpo = (disaster_at - last_restored).total_seconds() if last_restored else float("inf")
        step("result")
        print(f"achieved RPO: {rpo:8.2f} s  (disaster {disaster_at.isoformat()} - newest restored commit "
              f"{last_restored.isoformat() if last_restored else 'none'}); target {RPO_TARGET_S} s: "
              f"{'MET' if rpo <= RPO_TARGET_S else 'MISSED'}")
        print(f"achieved RTO: {rto:8.2f} s  (restore command start -> server serving and data checked); "
              f"target {RTO_TARGET_S} s: {'MET' if rto <= RTO_TARGET_S else 'MISSED'}")
        return 0 if ok and rpo <= RPO_TARGET_S and rto <= RTO_TARGET_S else 1
    finally:
        if pg_ctl and (restored_dir / "postmaster.pid").exists():
            subprocess.run(["runuser", "-u", "postgres", "--", pg_ctl, "-D", str(restored_dir), "-m", "fast",
                            "-w", "stop"], capture_output=True, check=False)
        if pg is not None:
            try:
                pg.stop()
            except Exception:  # noqa: BLE001 - already killed
                pass
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
