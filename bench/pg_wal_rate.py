"""Benchmark: does WAL archiving keep up with the highest WAL rate this machine makes?

Run as root with the drkit venv's Python (see bench/README.md):

    /opt/drkit/venv/bin/python bench/pg_wal_rate.py                                    # full
    /opt/drkit/venv/bin/python bench/pg_wal_rate.py --bulk-mb 400 --duration 15 --runs 1   # quick

One sandbox PostgreSQL 15 (archive_mode on; ``archive_command`` is switched per configuration
with ALTER SYSTEM + reload) and, in rounds, each configuration in turn:

- ``drkit-push``: ``archive_command = drkit pg wal-push --source bench %p`` (push-ahead included);
- ``drkit-receive``: the same archive_command plus ``drkit pg receive`` (pg_receivewal on a slot,
  sealed every 5 s);
- ``pgbackrest``: ``pgbackrest archive-push %p`` (zst 3, aes-256-cbc, as pg_backup.py);
- ``pgbackrest-async``: the same with ``archive-async=y`` (spool path, process-max 2);
- ``pg_receivewal``: ``pg_receivewal`` alone on a slot (``archive_command = true``).

Workload per run: a bulk load (``CREATE TABLE ... AS SELECT`` of md5/random rows from
generate_series, about --bulk-mb of table, one session: the highest WAL rate one session makes
here, ~55 MB/s), then ``pgbench -c 4 -j 2 -T DURATION`` (tpcb-like, scale 10), then a drain: the
load stops and the run waits (up to --drain-max s) until everything written is safe.

Sampled every second while the load runs (the drain is reported separately):

- ``backlog``: ``.ready`` files in pg_wal/archive_status (PostgreSQL's view of what is not yet
  archived; drkit's pushed-ahead segments stay ``.ready`` until their own call returns);
- ``uncommitted``: those ``.ready`` files not yet in the repository (drkit: no log record;
  pgBackRest async: no ``.ok`` in its spool; pgBackRest sync: all of them) -- data at risk;
- ``unsafe_segments``: WAL written but not yet safe, in 16 MB segments: (current LSN - safe LSN),
  where the safe LSN is the end of ``pg_stat_archiver.last_archived_wal`` (archive configurations:
  archive_command returned 0, which for every tool here means "in the repository") or the
  ``flush_lsn`` of the receiver in ``pg_stat_replication`` (pg_receivewal);
- ``ack_lag``: now minus the newest time T whose whole WAL (the insert LSN sampled every 0.25 s at
  T) lies before the safe LSN -- the newest-safe-commit lag every tool can be measured by;
- ``commit_lag`` (drkit only): now minus the source's newest safe time computed from the repository
  in-process, exactly as ``drkit list`` computes it (``newest_safe_time``: commit timestamps from
  pg_waldump, sealed partial copies included) -- the number drkit reports.

Also per run: WAL MB/s during the bulk load and overall, the drain time, and CPU seconds of the
archiving side: the archiver process and everything it reaped (archive_command and its children:
``/proc/PID/stat`` utime+stime+cutime+cstime), plus processes outside it (pgBackRest's async
daemon, polled; the receivers, reaped by this script with wait4(); the walsender serving them).
The server's own CPU for the load is not counted.  Rounds give medians; every sample is in --json.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import yaml
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pg_backup import as_postgres, machine_facts, mkdir_for_postgres  # noqa: E402

from drkit.sandbox.postgres import PgInstance, start_postgres  # noqa: E402

DRKIT = str(Path(sys.executable).parent / "drkit")
SOURCE = "bench"
SEG = 16 * 1024 * 1024
MB = 1024 * 1024
CONFIGS = ["drkit-push", "drkit-receive", "pgbackrest", "pgbackrest-async", "pg_receivewal"]
CLK = os.sysconf("SC_CLK_TCK")

PGBR_CONF = """[global]
repo1-path={repo}
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass={cipher}
compress-type=zst
compress-level=3
process-max=2
archive-check=n
log-level-console=warn
log-level-file=off
lock-path={lock}
spool-path={spool}
archive-async={async_}

[{stanza}]
pg1-path={pgdata}
pg1-port={port}
pg1-socket-path={socket}
pg1-user=postgres
"""


def lsn_int(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def segment_end_lsn(name: str | None) -> int:
    """End LSN of WAL segment ``name`` (16 MB segments); 0 for no segment."""
    if not name or len(name) < 24:
        return 0
    log_, seg = int(name[8:16], 16), int(name[16:24], 16)
    return (log_ << 32) + (seg + 1) * SEG


def proc_cpu(pid: int, children: bool = True) -> float:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return 0.0
    f = stat[stat.rfind(b")") + 2:].split()
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)
    return ticks / CLK


def proc_parent_comm(pid: int) -> tuple[int, str]:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        stat = fh.read()
    comm = stat[stat.find(b"(") + 1: stat.rfind(b")")].decode(errors="replace")
    return int(stat[stat.rfind(b")") + 2:].split()[1]), comm


def pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return round(xs[k], 2)


def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 2) if xs else None


class LsnClock(threading.Thread):
    """(monotonic time, insert LSN) every 0.25 s: maps a safe LSN to the newest fully safe time."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.samples: list[tuple[float, int]] = []
        self.stop_flag = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            while not self.stop_flag.is_set():
                lsn = c.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
                self.samples.append((time.monotonic(), lsn_int(lsn)))
                self.stop_flag.wait(0.25)

    def lsn_at(self, t: float) -> int:
        best = 0
        for ts, lsn in self.samples:
            if ts > t:
                break
            best = lsn
        return best

    def safe_time(self, safe_lsn: int, now: float) -> float | None:
        """Newest sample time <= now whose insert LSN is covered by ``safe_lsn``."""
        best = None
        for ts, lsn in self.samples:
            if ts > now:
                break
            if lsn <= safe_lsn:
                best = ts
        return best


class PgbrCpu(threading.Thread):
    """Own CPU of the processes outside the archiver: pgbackrest processes it did not start
    (the async daemon), and the receiver's process tree (``root``: pg_receivewal, drkit pg
    receive; children shorter than the 0.3 s poll are missed)."""

    def __init__(self, archiver: int, root: int | None = None) -> None:
        super().__init__(daemon=True)
        self.archiver, self.root = archiver, root
        self.seen: dict[int, float] = {}
        self.tree: dict[int, float] = {}
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            parents: dict[int, tuple[int, str]] = {}
            for e in os.listdir("/proc"):
                if e.isdigit():
                    try:
                        parents[int(e)] = proc_parent_comm(int(e))
                    except (OSError, IndexError, ValueError):
                        continue
            for pid, (ppid, comm) in parents.items():
                if comm == "pgbackrest" and ppid != self.archiver:
                    self.seen[pid] = max(self.seen.get(pid, 0.0), proc_cpu(pid, children=False))
                if self.root is not None:
                    p, hops = pid, 0
                    while p > 1 and p != self.root and hops < 8:
                        p, hops = parents.get(p, (0, ""))[0], hops + 1
                    if p == self.root:
                        self.tree[pid] = max(self.tree.get(pid, 0.0), proc_cpu(pid, children=False))
            self.stop_flag.wait(0.3)

    @property
    def total(self) -> float:
        return sum(self.seen.values())


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = mkdir_for_postgres(Path(args.workdir) / f"pgwalrate-{os.getpid()}", 0o755)
        self.key = self.work / "master.key"
        self.key.write_bytes(os.urandom(32).hex().encode())
        shutil.chown(self.key, "root", "postgres")
        self.key.chmod(0o640)
        self.pg: PgInstance = start_postgres(self.work / "pg", archive_command="/bin/true", settings={
            "max_wal_size": "8GB", "min_wal_size": "1GB", "checkpoint_timeout": "30min",
            "max_wal_senders": 10, "max_replication_slots": 10, "wal_keep_size": 0})
        self.status_dir = self.pg.data_dir / "pg_wal" / "archive_status"
        self.conn = psycopg.connect(self.pg.dsn, autocommit=True)
        subprocess.run([self.pg._bin("pgbench"), "-i", "-q", "-s", str(args.scale), self.pg.conninfo()],
                       check=True, capture_output=True)
        self.run_no = 0
        self.drkit = args.drkit_bin or DRKIT  # archive_command and the receiver (--drkit-bin)

    # -- archive_command switching ----------------------------------------------------------
    def set_archive_command(self, cmd: str) -> None:
        self.conn.execute(sql.SQL("ALTER SYSTEM SET archive_command = {}").format(sql.Literal(cmd)))
        self.conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)

    def ready(self) -> int:
        return sum(1 for n in os.listdir(self.status_dir) if n.endswith(".ready"))

    def ready_names(self) -> list[str]:
        return [n[: -len(".ready")] for n in os.listdir(self.status_dir) if n.endswith(".ready")]

    def drain_with_true(self) -> None:
        self.set_archive_command("/bin/true")
        t0 = time.monotonic()
        while self.ready() and time.monotonic() - t0 < 120:
            time.sleep(0.2)

    def archiver_pid(self) -> int:
        return self.conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'archiver'").fetchone()[0]

    def walsender_cpu(self) -> float:
        pids = [r[0] for r in self.conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'walsender'")]
        return sum(proc_cpu(p, children=False) for p in pids)

    # -- per configuration setup ------------------------------------------------------------
    def drkit_setup(self, tag: str) -> Path:
        repo = mkdir_for_postgres(self.work / f"repo-{tag}", 0o755)
        cfg = self.work / f"drkit-{tag}.yaml"
        cfg.write_text(yaml.safe_dump({"repository": {"url": f"file://{repo}"},
                                       "encryption": {"key_file": str(self.key)},
                                       "sources": {SOURCE: {"type": "postgres", "dsn": self.pg.dsn}}}))
        cfg.chmod(0o644)
        subprocess.run(as_postgres([DRKIT, "--config", str(cfg), "init"]), check=True, capture_output=True)
        self.set_archive_command(f"{self.drkit} --config {cfg} pg wal-push --source {SOURCE} %p")
        subprocess.run(as_postgres([DRKIT, "--config", str(cfg), "backup", SOURCE]), check=True, capture_output=True)
        return cfg

    def pgbr_setup(self, tag: str, async_: bool) -> Path:
        conf = self.work / f"pgbackrest-{tag}.conf"
        conf.write_text(PGBR_CONF.format(
            repo=mkdir_for_postgres(self.work / f"pgbr-repo-{tag}", 0o750), cipher=secrets.token_hex(32),
            lock=mkdir_for_postgres(self.work / f"pgbr-lock-{tag}"),
            spool=mkdir_for_postgres(self.work / f"pgbr-spool-{tag}"), async_="y" if async_ else "n",
            stanza=SOURCE, pgdata=self.pg.data_dir, port=self.pg.port, socket=self.pg.socket_dir))
        shutil.chown(conf, "postgres", "postgres")
        conf.chmod(0o640)
        subprocess.run(as_postgres(["pgbackrest", f"--config={conf}", f"--stanza={SOURCE}", "stanza-create"]),
                       check=True, capture_output=True)
        return conf

    def drop_slot(self, slot: str) -> None:
        for _ in range(50):
            try:
                self.conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                                  "WHERE slot_name = %s", (slot,))
                return
            except psycopg.errors.ObjectInUse:
                time.sleep(0.2)

    # -- one run -----------------------------------------------------------------------------
    def run(self, config: str) -> dict:
        self.run_no += 1
        tag = f"{config}-{self.run_no}"
        a = self.args
        self.drain_with_true()
        self.conn.execute("DROP TABLE IF EXISTS bulk_load")
        self.conn.execute("CHECKPOINT")
        self.conn.execute("SELECT pg_switch_wal()")
        self.drain_with_true()

        cfg = None
        receiver: subprocess.Popen | None = None
        slot = f"bench_{self.run_no}"
        repo = None
        if config.startswith("drkit"):
            cfg = self.drkit_setup(tag)
            from drkit.config import load_config
            from drkit.dumpers import dumper_for
            from drkit.ops import open_repository

            dconf = load_config(cfg)
            repo = open_repository(dconf)
            dumper = dumper_for(dconf, SOURCE)
        elif config.startswith("pgbackrest"):
            conf = self.pgbr_setup(tag, config == "pgbackrest-async")
            pgbr_spool = self.work / f"pgbr-spool-{tag}"
            self.set_archive_command(f"pgbackrest --config={conf} --stanza={SOURCE} archive-push %p")
        if config == "drkit-receive":
            spool = mkdir_for_postgres(self.work / f"spool-{tag}")
            receiver = subprocess.Popen(as_postgres(
                [self.drkit, "--config", str(cfg), "pg", "receive", "--source", SOURCE, "--dir", str(spool),
                 "--slot", slot, "--seal-seconds", str(a.seal_seconds)]),
                stdout=subprocess.DEVNULL, stderr=open(self.work / f"receive-{tag}.log", "wb"))  # noqa: SIM115
        elif config == "pg_receivewal":
            spool = mkdir_for_postgres(self.work / f"spool-{tag}")
            subprocess.run(as_postgres([self.pg._bin("pg_receivewal"), "-d", self.pg.conninfo(), "--slot", slot,
                                        "--create-slot", "--if-not-exists"]), check=True, capture_output=True)
            receiver = subprocess.Popen(as_postgres(
                [self.pg._bin("pg_receivewal"), "-d", self.pg.conninfo(), "-D", str(spool), "--slot", slot,
                 "--no-loop", "-s", "1"]), stdout=subprocess.DEVNULL,
                stderr=open(self.work / f"receive-{tag}.log", "wb"))  # noqa: SIM115
        if receiver is not None:  # let it connect before the load starts
            t0 = time.monotonic()
            while time.monotonic() - t0 < 30 and not self.conn.execute(
                    "SELECT 1 FROM pg_stat_replication").fetchone():
                time.sleep(0.2)
        if repo is not None:  # the backup's segment archived, the window exists
            t0 = time.monotonic()
            while time.monotonic() - t0 < 60 and self._newest_safe(repo, dumper) is None:
                time.sleep(0.5)

        archiver = self.archiver_pid()
        arch_cpu0 = proc_cpu(archiver)
        pgbr_cpu = PgbrCpu(archiver, receiver.pid if receiver is not None else None)
        pgbr_cpu.start()
        clock = LsnClock(self.pg.dsn)
        clock.start()
        time.sleep(0.3)
        samples: list[dict] = []
        stop = threading.Event()
        phase = {"name": "bulk"}

        def sampler() -> None:
            with psycopg.connect(self.pg.dsn, autocommit=True) as c:
                while not stop.is_set():
                    t = time.monotonic()
                    s: dict = {"t": t, "phase": phase["name"], "backlog": self.ready(), "lsn": clock.lsn_at(t)}
                    if config == "pg_receivewal" or config == "drkit-receive":
                        row = c.execute("SELECT flush_lsn::text FROM pg_stat_replication").fetchone()
                        s["flush_lsn"] = lsn_int(row[0]) if row and row[0] else 0
                    if config != "pg_receivewal":
                        last = c.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0]
                        s["archived_lsn"] = segment_end_lsn(last)
                    ready = self.ready_names()
                    if repo is not None:
                        try:
                            stored = set(repo.list_log_names(SOURCE))
                            s["uncommitted"] = sum(1 for n in ready if n not in stored)
                        except Exception:  # noqa: BLE001 - a sample, not the run
                            pass
                    elif config == "pgbackrest-async":
                        out = pgbr_spool / "archive" / SOURCE / "out"
                        s["uncommitted"] = sum(1 for n in ready if not (out / f"{n}.ok").exists())
                    elif config == "pgbackrest":
                        s["uncommitted"] = len(ready)
                    if repo is not None:
                        newest = self._newest_safe(repo, dumper)
                        s["commit_lag"] = (round((datetime.now(UTC) - newest).total_seconds(), 2)
                                           if newest else None)
                    samples.append(s)
                    stop.wait(max(0.0, 1.0 - (time.monotonic() - t)))

        th = threading.Thread(target=sampler, daemon=True)
        th.start()

        lsn0 = lsn_int(self.conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
        t0 = time.monotonic()
        rows = int(a.bulk_mb * MB / 140)
        self.conn.execute(
            "CREATE TABLE bulk_load AS SELECT g AS id, md5(g::text) AS a, md5((g * 7)::text) AS b, "
            "(random() * 1e9)::bigint AS c, now() + g * interval '1 ms' AS t FROM generate_series(1, %s) g",
            (rows,))
        t_bulk = time.monotonic()
        lsn_bulk = lsn_int(self.conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
        phase["name"] = "pgbench"
        pb = subprocess.run([self.pg._bin("pgbench"), "-n", "-c", "4", "-j", "2", "-T", str(a.duration),
                             self.pg.conninfo()], capture_output=True, text=True)
        t_load = time.monotonic()
        lsn_end = lsn_int(self.conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
        tps = next((float(line.split("=")[1].split()[0]) for line in pb.stdout.splitlines()
                    if line.startswith("tps")), None)
        phase["name"] = "drain"
        # Drain: everything written by the load end is safe (the current segment is switched out
        # for the archive configurations so they can finish).
        if config != "pg_receivewal":
            self.conn.execute("SELECT pg_switch_wal()")
        drained = None
        while time.monotonic() - t_load < a.drain_max:
            if samples and samples[-1]["t"] > t_load:
                s = samples[-1]
                safe = s.get("flush_lsn") if config == "pg_receivewal" else s.get("archived_lsn")
                if safe is not None and safe >= lsn_end:
                    drained = round(s["t"] - t_load, 1)
                    break
            time.sleep(0.5)
        stop.set()
        th.join()
        clock.stop_flag.set()
        clock.join()
        pgbr_cpu.stop_flag.set()
        pgbr_cpu.join()
        arch_cpu = proc_cpu(archiver) - arch_cpu0
        ws_cpu = self.walsender_cpu()
        recv_cpu = recv_exit = None
        if receiver is not None:
            recv_exit = receiver.poll()  # None: still running, as it should be
            if recv_exit is not None:
                log = (self.work / f"receive-{tag}.log").read_text(errors="replace").strip().splitlines()
                print(f"    WARNING: the receiver exited {recv_exit} during the run: {log[-1] if log else ''}",
                      flush=True)
            else:
                receiver.send_signal(signal.SIGTERM)  # runuser forwards it
                receiver.wait(60)
            recv_cpu = round(sum(pgbr_cpu.tree.values()), 2)
            self.drop_slot(slot)
        if repo is not None:
            repo.close() if hasattr(repo, "close") else None

        # -- per-sample derived figures ------------------------------------------------------
        for s in samples:
            safe = s.get("flush_lsn") if config == "pg_receivewal" else s.get("archived_lsn", 0)
            if config == "drkit-receive":
                safe = s.get("archived_lsn", 0)  # acknowledged by archive_command; receive is in commit_lag
            s["unsafe_segments"] = round(max(0, s["lsn"] - safe) / SEG, 1)
            st = clock.safe_time(safe, s["t"])
            s["ack_lag"] = round(s["t"] - st, 2) if st is not None else None
        load = [s for s in samples if s["phase"] != "drain"]
        backlog = [s["backlog"] for s in load]
        uncommitted = [s["uncommitted"] for s in load if "uncommitted" in s]
        ack = [s["ack_lag"] for s in load if s["ack_lag"] is not None]
        com = [s["commit_lag"] for s in load if s.get("commit_lag") is not None]
        result = {
            "config": config,
            "bulk_seconds": round(t_bulk - t0, 1), "bulk_wal_mb": round((lsn_bulk - lsn0) / MB),
            "bulk_wal_mb_s": round((lsn_bulk - lsn0) / MB / (t_bulk - t0), 1),
            "load_seconds": round(t_load - t0, 1), "wal_mb": round((lsn_end - lsn0) / MB),
            "wal_mb_s": round((lsn_end - lsn0) / MB / (t_load - t0), 1), "pgbench_tps": tps,
            "backlog_max": max(backlog) if backlog else None, "backlog_p95": pct(backlog, 95),
            "uncommitted_max": max(uncommitted, default=None), "uncommitted_p95": pct(uncommitted, 95),
            "unsafe_segments_max": max((s["unsafe_segments"] for s in load), default=None),
            "unsafe_segments_p95": pct([s["unsafe_segments"] for s in load], 95),
            "ack_lag_p50": pct(ack, 50), "ack_lag_p99": pct(ack, 99), "ack_lag_max": max(ack, default=None),
            "commit_lag_p50": pct(com, 50), "commit_lag_p99": pct(com, 99), "commit_lag_max": max(com, default=None),
            "drain_seconds": drained,
            "archiver_cpu_s": round(arch_cpu, 2), "pgbackrest_daemon_cpu_s": round(pgbr_cpu.total, 2),
            "receiver_cpu_s": recv_cpu, "receiver_exit_during_run": recv_exit, "walsender_cpu_s": round(ws_cpu, 2),
        }
        result["archiving_cpu_s"] = round(arch_cpu + pgbr_cpu.total + (recv_cpu or 0) + ws_cpu, 2)
        result["samples"] = [{k: v for k, v in s.items() if k not in ("lsn", "flush_lsn", "archived_lsn")}
                             | {"t": round(s["t"] - t0, 2)} for s in samples]
        print(f"  {config:17s} WAL {result['wal_mb']:5d} MB @ {result['wal_mb_s']:5.1f} MB/s "
              f"(bulk {result['bulk_wal_mb_s']:5.1f})  backlog max {result['backlog_max']} p95 {result['backlog_p95']}  "
              f"uncommitted max {result['uncommitted_max']}  unsafe max {result['unsafe_segments_max']}  ack lag p50/p99 {result['ack_lag_p50']}/{result['ack_lag_p99']} s  "
              f"commit lag p50/p99 {result['commit_lag_p50']}/{result['commit_lag_p99']} s  drain {drained} s  "
              f"cpu {result['archiving_cpu_s']} s", flush=True)
        return result

    @staticmethod
    def _newest_safe(repo, dumper):  # type: ignore[no-untyped-def]
        try:
            return dumper.restore_points(dumper.catalog(repo)).newest_safe_time()
        except Exception as exc:  # noqa: BLE001 - a sample, not the run
            print(f"    (newest safe time failed: {exc})", file=sys.stderr)
            return None

    def close(self) -> None:
        self.conn.close()
        self.pg.stop()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)


SUMMARY_KEYS = ["wal_mb_s", "bulk_wal_mb_s", "backlog_max", "backlog_p95", "uncommitted_max", "uncommitted_p95",
                "unsafe_segments_max",
                "unsafe_segments_p95", "ack_lag_p50", "ack_lag_p99", "commit_lag_p50", "commit_lag_p99",
                "drain_seconds", "archiving_cpu_s", "pgbench_tps"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bulk-mb", type=int, default=1300, help="size of the bulk-loaded table (default 1300)")
    ap.add_argument("--duration", type=int, default=60, help="pgbench seconds after the bulk load (default 60)")
    ap.add_argument("--scale", type=int, default=10, help="pgbench scale (default 10)")
    ap.add_argument("--runs", type=int, default=3, help="rounds; medians are reported (default 3)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {','.join(CONFIGS)}")
    ap.add_argument("--seal-seconds", type=float, default=5.0, help="drkit pg receive --seal-seconds (default 5)")
    ap.add_argument("--drain-max", type=float, default=120.0, help="wait up to this long after the load (default 120)")
    ap.add_argument("--json", help="write every run and sample here (e.g. bench/results/pg_wal_rate.json)")
    ap.add_argument("--drkit-bin", help="the drkit executable archive_command and the receiver run (another "
                    "version of drkit, for before/after comparisons; default: this venv's)")
    ap.add_argument("--workdir", default="/var/tmp")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        ap.error(f"unknown configuration(s) {', '.join(sorted(unknown))}; known: {', '.join(CONFIGS)}")
    if any(c.startswith("pgbackrest") for c in configs) and not shutil.which("pgbackrest"):
        ap.error("pgbackrest is not installed: run `bash scripts/install.sh --bench`, or leave it out with --configs")
    bench = Bench(args)
    runs: list[dict] = []
    try:
        for rnd in range(args.runs):
            print(f"round {rnd + 1}/{args.runs}", flush=True)
            order = configs[rnd % len(configs):] + configs[:rnd % len(configs)]
            for config in order:
                runs.append(bench.run(config) | {"round": rnd + 1})
    finally:
        bench.close()
    summary = {c: {k: median([r[k] for r in runs if r["config"] == c]) for k in SUMMARY_KEYS} for c in configs}
    out = {"args": vars(args), "machine": machine_facts(), "summary": summary, "runs": runs,
           "targets": {"backlog_max": 2, "receive_commit_lag_p99": 5, "receive_commit_lag_p99_decided": 10}}
    print("\nmedians over rounds:")
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
