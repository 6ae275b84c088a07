"""Benchmark: drkit full backup / restore of PostgreSQL against pgBackRest and a plain pipeline.

Run as root with the drkit venv's Python (see bench/README.md):

    /opt/drkit/venv/bin/python bench/pg_backup.py                  # full size: pgbench -s 150 + 1 GB
    /opt/drkit/venv/bin/python bench/pg_backup.py --scale 10 --realistic-mb 100 --runs 1   # quick

Everything runs in one process, on one dataset, in rounds: each round measures every tool once
(interleaved, so drift hits every tool alike), and the report gives the median of the rounds.

Dataset: ``pgbench -i -s SCALE`` (padded rows, ~29x compressible) plus ``bench_orders``, a table
of realistic rows (names, e-mails, free text from a word list, JSON with ids/IPs/md5 session
tokens, numbers, timestamps) of about REALISTIC_MB on disk, ~2.5x compressible with zstd -3.

Measured per round (page cache warm for every tool; ``sync`` before every measurement):

- drkit full backup into a fresh local repository; a second full of the unchanged database into
  the same repository (bytes stored vs the first); the same full into a fresh S3 bucket on a
  moto server (unless --no-s3);
- ``pg_basebackup -D - -Ft -X fetch | zstd -3 -T2 > file``;
- pgBackRest full (zst level 3, process-max 2, aes-256-cbc) into a fresh repository;
- restores: ``drkit restore SRC --backup ID --target-dir DIR`` (lay-down only),
  pgBackRest restore, ``zstd -d -c file | tar -x``; each then timed ``sync`` separately.

Wall time is measured around the command.  Peak RSS: /proc is polled every 50 ms and the VmRSS of
the tool's process tree (the command and all its descendants, minus the runuser/sh wrappers) is
summed; VmHWM of each process is also recorded (drkit's Python process alone).  CPU seconds come
from wait4() (the command and its reaped descendants).

``--profile`` additionally runs one drkit full backup under a per-thread cProfile
(bench/profile_drkit.py) and writes the top functions of every thread into the results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import yaml

from drkit.sandbox.postgres import PgInstance, start_postgres

HERE = Path(__file__).resolve().parent
DRKIT = str(Path(sys.executable).parent / "drkit")
SOURCE = "bench"
WRAPPERS = {"runuser", "bash", "sh", "su"}
MB = 1024 * 1024

WORDS = """
account action address advice agreement air airport amount analysis animal answer apartment
application appointment area argument arrival article assistant attention audience author
balance bank base basket battery bed bedroom benefit bicycle bill birthday blue board boat
body book bottle box branch bread breakfast bridge budget building business cabinet cable
calendar camera campaign candidate capital card care career carpet case cash category ceiling
chair chance change channel chapter charge cheese chicken child choice church city class client
clock cloud coach coast coffee collection college comment committee community company computer
concert condition connection contract control cookie copy corner cost country county course
court cousin cream credit culture cup customer cycle damage data date deal debt decision
delivery department deposit design desk detail device diamond dinner direction discount
disease distance district doctor document door draft drawer driver east economy edge editor
education effect election energy engine entry environment equipment error estate event
evidence exam example exchange expert factor family farm feature feedback field file finance
floor flower food football forest form fortune frame freedom friend fruit fuel function garden
gate gift glass goal government grade grass green ground group growth guest guide hall health
heart heat highway history holiday home hospital hotel house idea image income industry
insurance interest invoice island item jacket job journey judge kitchen knowledge lab lake
language laptop lawyer leader lesson letter library license light limit line list loan
location machine magazine manager market marriage material meal measure media meeting member
memory menu message method middle minute mirror model moment money month morning mountain movie
music nation nature network news night north note number object office oil opinion option
orange order owner package page painting paper parcel parent park partner party passenger
payment pension people pepper period person phone photo piano picture plan plant platform player
pocket poem police policy pollution pool position potato power present price printer problem
process product profit program project property purchase quality quarter question radio rate
reason receipt recipe record refund region report request research resource restaurant result
review river road room route safety salad salary sale sample school science screen season
secret section security service session shape share shipment shop signal silver size skill
software solution song sound source south space speaker speech sport spring square staff stage
standard station status steak storage store story street student studio style subject success
sugar summer supplier support surface survey system table target task tax teacher team
technology television temperature tennis term test theory ticket time title tool topic tour
town track trade traffic training transport travel tree truck union unit university update user
value vehicle version video village visit voice volume warehouse water wealth weather website
week weight west window winter wood worker world year yellow zone
""".split()
FIRST = """James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara
Richard Susan Joseph Jessica Thomas Sarah Charles Karen Christopher Lisa Daniel Nancy Matthew
Betty Anthony Margaret Mark Sandra Donald Ashley Steven Kimberly Paul Emily Andrew Donna Joshua
Michelle Kenneth Carol Kevin Amanda Brian Dorothy George Melissa Timothy Deborah Ahmed Fatima
Wei Mei Hiroshi Yuki Olga Ivan Lucia Mateo Sofia Luca Giulia Lars Ingrid Pierre Camille Hans
Anna Jose Maria Carlos Ana""".split()
LAST = """Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez
Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris
Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill
Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Muller Schmidt
Schneider Fischer Weber Rossi Russo Ferrari Dubois Laurent Tanaka Suzuki Sato Wang Li Zhang
Chen Kowalski Novak Ivanov Petrov Silva Santos Oliveira""".split()
DOMAINS = "gmail.com yahoo.com outlook.com example.org mail.com proton.me corp.example.net".split()
AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 Version/17.2 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "okhttp/4.12.0", "python-requests/2.31.0",
]
STATUSES = ["new", "paid", "shipped", "delivered", "cancelled", "refunded", "on_hold"]
COUNTRIES = "US DE FR GB IT ES NL SE PL JP CN IN BR MX CA AU".split()

REALISTIC_DDL = """
CREATE OR REPLACE FUNCTION bench_words(w text[], n int) RETURNS text LANGUAGE sql VOLATILE AS $$
  SELECT string_agg(w[1 + floor(random() * array_length(w, 1))::int], ' ') FROM generate_series(1, n)
$$;
CREATE OR REPLACE FUNCTION bench_pick(w text[]) RETURNS text LANGUAGE sql VOLATILE AS $$
  SELECT w[1 + floor(random() * array_length(w, 1))::int]
$$;
CREATE TABLE IF NOT EXISTS bench_orders (
  id bigint PRIMARY KEY, created_at timestamptz NOT NULL, customer text, email text,
  status text, amount numeric(12,2), quantity int, country char(2), description text,
  payload jsonb);
"""
REALISTIC_INSERT = """
INSERT INTO bench_orders
SELECT g, ts, f || ' ' || l,
       lower(f) || '.' || lower(l) || (random() * 999)::int || '@' || bench_pick(%(domains)s),
       bench_pick(%(statuses)s), round((random() * 2000)::numeric, 2), 1 + (random() * 20)::int,
       bench_pick(%(countries)s),
       bench_words(%(words)s, 3 + (random() * 10)::int),
       jsonb_build_object(
         'sku', upper(substr(md5(random()::text), 1, 10)),
         'session', md5(random()::text),
         'trace', md5(random()::text) || substr(md5(random()::text), 1, 16),
         'token', encode(decode(md5(random()::text) || md5(random()::text), 'hex'), 'base64'),
         'ip', concat_ws('.', (random() * 223)::int + 1, (random() * 255)::int, (random() * 255)::int,
                         (random() * 255)::int),
         'agent', bench_pick(%(agents)s),
         'device', encode(decode(md5(random()::text), 'hex'), 'base64'),
         'lat', round((random() * 180 - 90)::numeric, 5), 'lon', round((random() * 360 - 180)::numeric, 5),
         'tags', jsonb_build_array(bench_pick(%(words)s), bench_pick(%(words)s)),
         'updated', ts + random() * interval '30 days',
         'note', bench_words(%(words)s, 1 + (random() * 4)::int))
FROM (SELECT g, now() - random() * interval '730 days' AS ts,
             bench_pick(%(first)s) AS f, bench_pick(%(last)s) AS l
      FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) g) s
"""


# ------------------------------------------------------------------------------------------
# Measuring a command: wall time, CPU, peak RSS of its process tree


def _proc_table() -> dict[int, tuple[int, str]]:
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        lp, rp = stat.find(b"("), stat.rfind(b")")
        comm = stat[lp + 1 : rp].decode(errors="replace")
        ppid = int(stat[rp + 2 :].split()[1])
        table[int(entry)] = (ppid, comm)
    return table


def _status_kb(pid: int) -> tuple[int, int]:
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


class TreePoller(threading.Thread):
    """Samples the summed VmRSS of a process tree and each member's VmHWM until stopped."""

    def __init__(self, root_pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.root = root_pid
        self.interval = interval
        self.stop_flag = threading.Event()
        self.peak_tree_kb = 0
        self.hwm_by_comm: dict[str, int] = {}

    def run(self) -> None:
        while not self.stop_flag.is_set():
            table = _proc_table()
            kids: dict[int, list[int]] = {}
            for pid, (ppid, _) in table.items():
                kids.setdefault(ppid, []).append(pid)
            tree, frontier = [], [self.root]
            while frontier:
                pid = frontier.pop()
                tree.append(pid)
                frontier.extend(kids.get(pid, []))
            total = 0
            for pid in tree:
                comm = table.get(pid, (0, "?"))[1]
                rss, hwm = _status_kb(pid)
                if comm in WRAPPERS:
                    continue
                total += rss
                self.hwm_by_comm[comm] = max(self.hwm_by_comm.get(comm, 0), hwm)
            self.peak_tree_kb = max(self.peak_tree_kb, total)
            self.stop_flag.wait(self.interval)


@dataclass
class Measure:
    label: str
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    hwm_mb: dict[str, float] = field(default_factory=dict)
    stdout: str = ""
    extra: dict = field(default_factory=dict)


def _busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, /proc/stat), to spot noise."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


IDLE_WAIT_MAX = 180.0  # --idle-wait


def wait_idle(max_wait: float, threshold_cores: float = 0.25) -> float:
    """Wait (up to max_wait s) for a 2 s window in which the machine is nearly idle."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_wait:
        b0 = _busy_seconds()
        time.sleep(2.0)
        if (_busy_seconds() - b0) / 2.0 < threshold_cores:
            break
    return time.monotonic() - t0


def measure(label: str, argv: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
            stdout_to: str | None = None) -> Measure:
    subprocess.run(["sync"], check=True)
    waited = wait_idle(IDLE_WAIT_MAX) if IDLE_WAIT_MAX > 0 else 0.0
    out_fh = open(stdout_to, "wb") if stdout_to else subprocess.PIPE  # noqa: SIM115
    busy0 = _busy_seconds()
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=out_fh, stderr=subprocess.PIPE, env=env, cwd=cwd)
    poller = TreePoller(proc.pid)
    poller.start()
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []

    def drain(stream, sink) -> None:  # type: ignore[no-untyped-def]
        for block in iter(lambda: stream.read(65536), b""):
            sink.append(block)

    readers = [threading.Thread(target=drain, args=(proc.stderr, err_chunks), daemon=True)]
    if proc.stdout is not None:
        readers.append(threading.Thread(target=drain, args=(proc.stdout, out_chunks), daemon=True))
    for r in readers:
        r.start()
    _, status, ru = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - t0
    machine_busy = _busy_seconds() - busy0
    poller.stop_flag.set()
    poller.join()
    for r in readers:
        r.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if stdout_to:
        out_fh.close()  # type: ignore[union-attr]
    out = b"".join(out_chunks).decode(errors="replace")
    err = b"".join(err_chunks).decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{label}: {' '.join(argv)} exited {proc.returncode}\n{out[-3000:]}\n{err[-3000:]}")
    m = Measure(
        label=label, seconds=seconds, cpu_seconds=ru.ru_utime + ru.ru_stime,
        peak_rss_mb=poller.peak_tree_kb / 1024,
        hwm_mb={k: round(v / 1024, 1) for k, v in sorted(poller.hwm_by_comm.items(), key=lambda kv: -kv[1])},
        stdout=out, extra={"machine_busy_cpu_s": round(machine_busy, 2),
                           "other_cpu_s": round(machine_busy - (ru.ru_utime + ru.ru_stime), 2),
                           "idle_wait_s": round(waited, 1)},
    )
    print(f"  {label:28s} {seconds:8.2f} s  cpu {m.cpu_seconds:7.2f} s  other {m.extra['other_cpu_s']:6.2f} s  peak tree RSS {m.peak_rss_mb:7.1f} MB  "
          f"{dict(list(m.hwm_mb.items())[:3])}", flush=True)
    return m


def timed_sync() -> float:
    t0 = time.monotonic()
    subprocess.run(["sync"], check=True)
    return time.monotonic() - t0


def du_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv]


def mkdir_for_postgres(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    shutil.chown(path, "postgres", "postgres")
    path.chmod(mode)
    return path


# ------------------------------------------------------------------------------------------
# Dataset


def load_dataset(pg: PgInstance, scale: int, realistic_mb: int) -> dict:
    t0 = time.monotonic()
    # pgbench and the realistic table load concurrently (2 backends; not measured).
    pgb = subprocess.Popen([str(pg.bin_dir / "pgbench"), "-i", "-q", "-s", str(scale), pg.dsn],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    params = {"words": WORDS, "first": FIRST, "last": LAST, "domains": DOMAINS, "agents": AGENTS,
              "statuses": STATUSES, "countries": COUNTRIES}
    with psycopg.connect(pg.dsn, autocommit=True) as c:
        c.execute(REALISTIC_DDL)
        lo, batch = 1, 100_000
        while True:
            size = c.execute("SELECT pg_table_size('bench_orders')").fetchone()[0]
            if size >= realistic_mb * MB:
                break
            if lo > 1:  # size the remaining batches from the observed row width
                per_row = size / (lo - 1)
                batch = max(1000, min(200_000, int((realistic_mb * MB - size) / per_row) + 1))
            c.execute(REALISTIC_INSERT, {**params, "lo": lo, "hi": lo + batch - 1})
            lo += batch
        rows = lo - 1
    out = pgb.communicate()[0].decode(errors="replace")
    if pgb.returncode != 0:
        raise RuntimeError(f"pgbench -i failed:\n{out}")
    with psycopg.connect(pg.dsn, autocommit=True) as c:
        c.execute("VACUUM ANALYZE")
        c.execute("CHECKPOINT")
        db_size = c.execute("SELECT sum(pg_database_size(oid)) FROM pg_database").fetchone()[0]
        real_size = c.execute("SELECT pg_total_relation_size('bench_orders')").fetchone()[0]
        real_heap = c.execute("SELECT pg_relation_size('bench_orders')").fetchone()[0]
        pgb_size = c.execute(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c WHERE relname LIKE 'pgbench_%'"
            " AND relkind = 'r'").fetchone()[0]
        heap_file = c.execute("SELECT pg_relation_filepath('bench_orders')").fetchone()[0]
    return {"load_seconds": round(time.monotonic() - t0, 1), "realistic_rows": rows,
            "cluster_bytes": int(db_size), "realistic_table_bytes": int(real_size),
            "realistic_heap_bytes": int(real_heap), "pgbench_tables_bytes": int(pgb_size),
            "realistic_heap_file": str(pg.data_dir / heap_file)}


def compression_check(pg: PgInstance, work: Path, heap_file: str) -> dict:
    """zstd -3 ratio of a COPY sample of the realistic rows and of its first heap segment."""
    sample = work / "sample.copy"
    with open(sample, "wb") as fh, psycopg.connect(pg.dsn) as c, c.cursor() as cur:
        with cur.copy("COPY (SELECT * FROM bench_orders WHERE id % 10 = 0 LIMIT 200000) TO STDOUT") as cp:
            for block in cp:
                fh.write(block)
    res = {}
    for name, path in (("copy_sample", sample), ("heap_segment", Path(heap_file))):
        raw = path.stat().st_size
        comp = subprocess.run(["zstd", "-3", "-c", str(path)], capture_output=True, check=True).stdout
        res[name] = {"bytes": raw, "zstd3_ratio": round(raw / len(comp), 2)}
    sample.unlink()
    return res


# ------------------------------------------------------------------------------------------
# Tools


def write_drkit_config(path: Path, key: Path, repo_url: str, dsn: str, s3: dict | None = None,
                       data_dir: Path | None = None) -> Path:
    source: dict = {"type": "postgres", "dsn": dsn}
    if data_dir is not None:  # node-local full backups (pg_backup_start/stop, files read directly)
        source["data_dir"] = str(data_dir)
    cfg = {"repository": {"url": repo_url, **({"s3": s3} if s3 else {})},
           "encryption": {"key_file": str(key)},
           "sources": {SOURCE: source}}
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o644)
    return path


def drkit_cmd(config: Path, *args: str) -> list[str]:
    return [DRKIT, "--config", str(config), *args]


def drkit_init(config: Path, env: dict[str, str] | None = None) -> None:
    subprocess.run(drkit_cmd(config, "init"), check=True, capture_output=True, env=env)


PGBR_CONF = """[global]
repo1-path={repo}
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass={cipher}
repo1-retention-full=100
compress-type=zst
compress-level=3
process-max=2
start-fast=y
archive-check=n
log-level-console=warn
log-level-file=off
lock-path={lock}
spool-path={spool}

[{stanza}]
pg1-path={pgdata}
pg1-port={port}
pg1-socket-path={socket}
pg1-user=postgres
"""


def pgbackrest_setup(work: Path, pg: PgInstance, tag: str) -> tuple[list[str], Path]:
    repo = mkdir_for_postgres(work / f"pgbr-repo-{tag}", 0o750)
    conf = work / f"pgbackrest-{tag}.conf"
    conf.write_text(PGBR_CONF.format(
        repo=repo, cipher=secrets.token_hex(32), lock=mkdir_for_postgres(work / "pgbr-lock"),
        spool=mkdir_for_postgres(work / "pgbr-spool"), stanza=SOURCE, pgdata=pg.data_dir, port=pg.port,
        socket=pg.socket_dir))
    shutil.chown(conf, "postgres", "postgres")
    conf.chmod(0o640)
    base = as_postgres(["pgbackrest", f"--config={conf}", f"--stanza={SOURCE}"])
    subprocess.run([*base, "stanza-create"], check=True, capture_output=True)
    return base, repo


def pgbackrest_last_label(base: list[str]) -> str:
    info = json.loads(subprocess.run([*base, "info", "--output=json"], check=True, capture_output=True).stdout)
    return info[0]["backup"][-1]["label"]


# ------------------------------------------------------------------------------------------
# Main


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def machine_facts() -> dict:
    model = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    pgv = subprocess.run(["pg_basebackup", "--version"], capture_output=True, text=True).stdout.strip()
    pgbr = subprocess.run(["pgbackrest", "version"], capture_output=True, text=True).stdout.strip()
    zv = subprocess.run(["zstd", "--version"], capture_output=True, text=True).stdout.strip()
    dv = subprocess.run([DRKIT, "--version"], capture_output=True, text=True).stdout.strip()
    import drkit  # noqa: PLC0415 - which source tree the venv runs (an editable install follows edits)

    src = Path(drkit.__file__).resolve().parent
    commit = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "."], capture_output=True,
                           text=True).stdout.strip()
    dv = f"{dv} ({src}, commit {commit or '?'}{', modified' if dirty else ''})"
    return {"nproc": os.cpu_count(), "cpu_model": model, "mem_gb": round(mem_kb / 1024 / 1024, 1),
            "kernel": platform.release(), "python": platform.python_version(), "pg_basebackup": pgv,
            "pgbackrest": pgbr, "zstd": zv, "drkit": dv}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=150, help="pgbench scale (150 = ~2.2 GB)")
    ap.add_argument("--realistic-mb", type=int, default=1024, help="size of the realistic table on disk")
    ap.add_argument("--runs", type=int, default=3, help="rounds (medians are reported)")
    ap.add_argument("--no-s3", action="store_true", help="skip the moto S3 measurements")
    ap.add_argument("--no-pgbackrest", action="store_true")
    ap.add_argument("--no-node-local", action="store_true", help="skip the node-local (data_dir) drkit full")
    ap.add_argument("--profile", action="store_true", help="also profile one drkit full per thread")
    ap.add_argument("--workdir", default="/var/tmp", help="parent of the work directory")
    ap.add_argument("--json", default=None, help="write all results to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--idle-wait", type=float, default=IDLE_WAIT_MAX,
                    help="before each measurement wait up to this many seconds for an idle machine")
    args = ap.parse_args()
    globals()["IDLE_WAIT_MAX"] = args.idle_wait
    if os.geteuid() != 0:
        raise SystemExit("run as root (PostgreSQL and pgBackRest run as the postgres OS user)")

    work = Path(args.workdir) / f"drkit-bench-{os.getpid()}"
    work.mkdir(parents=True)
    work.chmod(0o755)
    results: dict = {"machine": machine_facts(), "args": vars(args), "rounds": []}
    print(json.dumps(results["machine"], indent=1), flush=True)
    pg = moto = None
    try:
        pg = start_postgres(work / "pg", settings={"max_wal_size": "4GB", "checkpoint_timeout": "30min"})
        print(f"PostgreSQL on port {pg.port}; loading pgbench -s {args.scale} + {args.realistic_mb} MB of "
              "realistic rows ...", flush=True)
        results["dataset"] = load_dataset(pg, args.scale, args.realistic_mb)
        results["dataset"]["compression"] = compression_check(pg, work, results["dataset"]["realistic_heap_file"])
        print(json.dumps(results["dataset"], indent=1), flush=True)

        key = work / "master.key"
        key.write_bytes(os.urandom(32).hex().encode())
        key.chmod(0o640)
        shutil.chown(key, "root", "postgres")
        s3_env = None
        if not args.no_s3:
            from drkit.sandbox.s3 import start_moto

            moto = start_moto(work / "moto")
            s3_env = {**os.environ, "AWS_ACCESS_KEY_ID": moto.access_key,
                      "AWS_SECRET_ACCESS_KEY": moto.secret_key, "AWS_DEFAULT_REGION": moto.region}

        for rnd in range(args.runs):
            print(f"\n== round {rnd + 1}/{args.runs}", flush=True)
            r: dict = {}
            results["partial_round"] = r
            rw = work / f"round{rnd}"
            rw.mkdir()
            rw.chmod(0o755)

            # drkit, local repository: first full, then a second full of the unchanged database.
            repo = mkdir_for_postgres(rw / "drkit-repo", 0o755)
            cfg = write_drkit_config(rw / "drkit.yaml", key, f"file://{repo}", pg.dsn)
            drkit_init(cfg)
            m1 = measure("drkit full (local)", drkit_cmd(cfg, "backup", SOURCE, "--json"))
            first = json.loads(m1.stdout)
            size_after_1 = du_bytes(repo)
            m2 = measure("drkit 2nd full (local)", drkit_cmd(cfg, "backup", SOURCE, "--json"))
            second = json.loads(m2.stdout)
            size_after_2 = du_bytes(repo)
            r["drkit_full"] = vars(m1) | {"stdout": "", "stored_bytes": first["stored_bytes"],
                                          "stream_bytes": first["size"], "repo_bytes": size_after_1}
            r["drkit_second_full"] = vars(m2) | {"stdout": "", "stored_bytes": second["stored_bytes"],
                                                 "repo_growth_bytes": size_after_2 - size_after_1,
                                                 "chunks_new": second["metadata"].get("chunks_new"),
                                                 "chunks_reused": second["metadata"].get("chunks_reused")}

            # drkit node-local (data_dir set): pg_backup_start/stop, data files read directly.
            if not args.no_node_local:
                repo_nl = mkdir_for_postgres(rw / "drkit-repo-nl", 0o755)
                cfg_nl = write_drkit_config(rw / "drkit-nl.yaml", key, f"file://{repo_nl}", pg.dsn,
                                            data_dir=pg.data_dir)
                drkit_init(cfg_nl)
                m = measure("drkit full node-local", drkit_cmd(cfg_nl, "backup", SOURCE, "--json"))
                out_nl = json.loads(m.stdout)
                assert out_nl["metadata"]["method"] == "local", out_nl["metadata"]
                r["drkit_full_node_local"] = vars(m) | {"stdout": "", "stored_bytes": out_nl["stored_bytes"],
                                                        "stream_bytes": out_nl["size"],
                                                        "chunks_new": out_nl["metadata"].get("chunks_new")}
                # ... and a second node-local full of the unchanged database (dedup in this mode).
                m = measure("drkit 2nd full node-local", drkit_cmd(cfg_nl, "backup", SOURCE, "--json"))
                out_nl2 = json.loads(m.stdout)
                r["drkit_second_full_node_local"] = vars(m) | {
                    "stdout": "", "stored_bytes": out_nl2["stored_bytes"],
                    "chunks_new": out_nl2["metadata"].get("chunks_new"),
                    "chunks_reused": out_nl2["metadata"].get("chunks_reused")}
                shutil.rmtree(repo_nl)

            # drkit, S3 (moto): a fresh bucket each round.
            if moto is not None:
                bucket = f"bench-{rnd}-{secrets.token_hex(3)}"
                moto.create_bucket(bucket)
                s3cfg = write_drkit_config(rw / "drkit-s3.yaml", key, f"s3://{bucket}/drkit", pg.dsn,
                                           s3={"endpoint_url": moto.endpoint_url, "addressing_style": "path"})
                drkit_init(s3cfg, env=s3_env)
                m = measure("drkit full (S3 moto)", drkit_cmd(s3cfg, "backup", SOURCE, "--json"), env=s3_env)
                r["drkit_full_s3"] = vars(m) | {"stdout": "", "stored_bytes": json.loads(m.stdout)["stored_bytes"]}

            # Baseline pipeline.
            tarzst = rw / "base.tar.zst"
            pipe = (f"{pg.bin_dir}/pg_basebackup -d '{pg.dsn}' -D - -Ft -X fetch -c fast | "
                    f"zstd -q -3 -T2 > {tarzst}")
            m = measure("pg_basebackup | zstd -3 -T2", ["bash", "-o", "pipefail", "-c", pipe])
            r["pipeline"] = vars(m) | {"stdout": "", "bytes": tarzst.stat().st_size}

            # pgBackRest.
            if not args.no_pgbackrest:
                base, pgbr_repo = pgbackrest_setup(rw, pg, f"r{rnd}")
                m = measure("pgBackRest full", [*base, "--type=full", "backup"])
                r["pgbackrest_full"] = vars(m) | {"stdout": "", "repo_bytes": du_bytes(pgbr_repo)}
                label = pgbackrest_last_label(base)

            # Restores (lay-down only), each followed by a timed sync.
            tgt = rw / "restore-drkit"
            m = measure("drkit restore (local)", drkit_cmd(cfg, "restore", SOURCE, "--backup", first["id"],
                                                          "--target-dir", str(tgt), "--json"))
            r["drkit_restore"] = vars(m) | {"stdout": "", "sync_seconds": timed_sync(),
                                            "restored_bytes": du_bytes(tgt)}
            shutil.rmtree(tgt)
            if not args.no_pgbackrest:
                tgt = mkdir_for_postgres(rw / "restore-pgbr")
                m = measure("pgBackRest restore", [*base, f"--set={label}", f"--pg1-path={tgt}", "restore"])
                r["pgbackrest_restore"] = vars(m) | {"stdout": "", "sync_seconds": timed_sync(),
                                                     "restored_bytes": du_bytes(tgt)}
                shutil.rmtree(tgt)
                shutil.rmtree(pgbr_repo)
            tgt = rw / "restore-tar"
            tgt.mkdir()
            m = measure("zstd -d | tar -x", ["bash", "-o", "pipefail", "-c",
                                             f"zstd -q -d -c {tarzst} | tar -x -C {tgt}"])
            r["pipeline_restore"] = vars(m) | {"stdout": "", "sync_seconds": timed_sync(),
                                               "restored_bytes": du_bytes(tgt)}
            shutil.rmtree(tgt)
            results["rounds"].append(r)
            results.pop("partial_round", None)
            shutil.rmtree(rw)

        if args.profile:
            print("\n== profiling one drkit full (per-thread cProfile; slower than unprofiled)", flush=True)
            pw = work / "profile"
            pw.mkdir()
            pw.chmod(0o755)
            repo = mkdir_for_postgres(pw / "drkit-repo", 0o755)
            cfg = write_drkit_config(pw / "drkit.yaml", key, f"file://{repo}", pg.dsn)
            drkit_init(cfg)
            prof_out = work / "profile.txt"
            m = measure("drkit full (profiled)", [sys.executable, str(HERE / "profile_drkit.py"), "--out",
                                                  str(prof_out), "--", "--config", str(cfg), "backup", SOURCE])
            results["profile"] = {"seconds": m.seconds, "cpu_seconds": m.cpu_seconds,
                                  "report": prof_out.read_text()}
            print(results["profile"]["report"][:6000])

        results["summary"] = summarize(results)
        print("\n" + results["summary"]["table"])
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
            print(f"results written to {args.json}")
        return 0
    except BaseException as exc:
        # Keep what was measured: a failure late in a long run must not lose the earlier rounds.
        results["error"] = f"{type(exc).__name__}: {exc}"
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
            print(f"partial results written to {args.json}", file=sys.stderr)
        raise
    finally:
        if moto is not None:
            moto.stop()
        if pg is not None:
            pg.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def summarize(results: dict) -> dict:
    rounds = results["rounds"]

    def col(name: str, key: str) -> float:
        vals = [r[name][key] for r in rounds if name in r]
        return median(vals) if vals else float("nan")

    names = [("drkit_full", "drkit full, local repo"),
             ("drkit_full_node_local", "drkit full node-local (data_dir), local repo"), ("drkit_full_s3", "drkit full, S3 (moto)"),
             ("drkit_second_full", "drkit 2nd full (unchanged DB)"),
             ("drkit_second_full_node_local", "drkit 2nd full node-local (unchanged DB)"),
             ("pipeline", "pg_basebackup -Ft -X fetch \\| zstd -3 -T2"), ("pgbackrest_full", "pgBackRest full"),
             ("drkit_restore", "drkit restore (lay-down)"), ("pgbackrest_restore", "pgBackRest restore"),
             ("pipeline_restore", "zstd -d \\| tar -x")]
    med = {}
    lines = ["| what | wall s (median) | runs | CPU s | other CPU s | peak RSS tree MB | + sync s |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for key, title in names:
        if not any(key in r for r in rounds):
            continue
        runs = [round(r[key]["seconds"], 2) for r in rounds if key in r]
        med[key] = {"seconds": col(key, "seconds"), "cpu": col(key, "cpu_seconds"), "rss": col(key, "peak_rss_mb")}
        sync = f"{col(key, 'sync_seconds'):.2f}" if "sync_seconds" in rounds[0].get(key, {}) else ""
        if sync:
            med[key]["sync"] = col(key, "sync_seconds")
        other = median([r[key]["extra"].get("other_cpu_s", float("nan")) for r in rounds if key in r])
        lines.append(f"| {title} | {med[key]['seconds']:.2f} | {runs} | {med[key]['cpu']:.1f} | {other:.1f} | "
                     f"{med[key]['rss']:.0f} | {sync} |")
    ratios = {}

    def ratio(a: str, b: str, field_: str = "seconds") -> float | None:
        if a in med and b in med and med[b][field_]:
            return round(med[a][field_] / med[b][field_], 2)
        return None

    ratios["drkit_full / pgbackrest_full"] = ratio("drkit_full", "pgbackrest_full")
    ratios["drkit_full / pipeline"] = ratio("drkit_full", "pipeline")
    ratios["drkit_full_node_local / pgbackrest_full"] = ratio("drkit_full_node_local", "pgbackrest_full")
    ratios["drkit_full_node_local / pipeline"] = ratio("drkit_full_node_local", "pipeline")
    ratios["drkit_full_node_local / pgbackrest_full (CPU s)"] = ratio("drkit_full_node_local", "pgbackrest_full", "cpu")
    ratios["drkit_full / pgbackrest_full (CPU s)"] = ratio("drkit_full", "pgbackrest_full", "cpu")
    for a in ("drkit_full_node_local", "drkit_full"):  # per round: robust to load that hit one round
        for f in ("seconds", "cpu_seconds"):
            pairs = [round(r[a][f] / r["pgbackrest_full"][f], 2) for r in rounds
                     if a in r and "pgbackrest_full" in r and r["pgbackrest_full"][f]]
            if pairs:
                ratios[f"{a} / pgbackrest_full per round ({'wall' if f == 'seconds' else 'CPU s'})"] = pairs
    ratios["drkit_full_s3 / pgbackrest_full"] = ratio("drkit_full_s3", "pgbackrest_full")
    ratios["drkit_full_s3 / pipeline"] = ratio("drkit_full_s3", "pipeline")
    ratios["drkit_restore / pgbackrest_restore"] = ratio("drkit_restore", "pgbackrest_restore")
    ratios["drkit_restore / pipeline_restore"] = ratio("drkit_restore", "pipeline_restore")
    if "drkit_restore" in med and "pgbackrest_restore" in med:
        ratios["drkit_restore+sync / pgbackrest_restore+sync"] = round(
            (med["drkit_restore"]["seconds"] + med["drkit_restore"]["sync"])
            / (med["pgbackrest_restore"]["seconds"] + med["pgbackrest_restore"]["sync"]), 2)
    second = median([r["drkit_second_full"]["stored_bytes"] / r["drkit_full"]["stored_bytes"] for r in rounds])
    ratios["drkit 2nd full stored bytes / 1st"] = round(second, 4)
    if any("drkit_second_full_node_local" in r for r in rounds):
        ratios["drkit 2nd full node-local stored bytes / 1st"] = round(median(
            [r["drkit_second_full_node_local"]["stored_bytes"] / r["drkit_full_node_local"]["stored_bytes"]
             for r in rounds if "drkit_second_full_node_local" in r]), 4)
    sizes = {
        "drkit_stored_bytes": median([r["drkit_full"]["stored_bytes"] for r in rounds]),
        "drkit_stream_bytes": median([r["drkit_full"]["stream_bytes"] for r in rounds]),
        "drkit_second_stored_bytes": median([r["drkit_second_full"]["stored_bytes"] for r in rounds]),
        "pipeline_bytes": median([r["pipeline"]["bytes"] for r in rounds]),
    }
    if any("drkit_full_node_local" in r for r in rounds):
        sizes["drkit_node_local_stored_bytes"] = median([r["drkit_full_node_local"]["stored_bytes"] for r in rounds
                                                         if "drkit_full_node_local" in r])
        sizes["drkit_node_local_chunks"] = median([r["drkit_full_node_local"].get("chunks_new") or 0 for r in rounds
                                                   if "drkit_full_node_local" in r])
    if any("pgbackrest_full" in r for r in rounds):
        sizes["pgbackrest_repo_bytes"] = median([r["pgbackrest_full"]["repo_bytes"] for r in rounds
                                                 if "pgbackrest_full" in r])
    table = "\n".join(lines) + "\n\nratios: " + json.dumps(ratios, indent=1) + "\nsizes: " + json.dumps(sizes, indent=1)
    return {"medians": med, "ratios": ratios, "sizes": sizes, "table": table}


if __name__ == "__main__":
    sys.exit(main())
