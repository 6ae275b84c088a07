"""The PostgreSQL sandbox against real servers: start, replicate, stop, crash, fail loudly."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drkit.sandbox import SandboxError, port_is_free
from drkit.sandbox.postgres import (
    PgInstance,
    _descendants,
    _pid_alive,
    start_existing,
    start_postgres,
)


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not pytest's tmp_path: /tmp/pytest-of-root is 0700, and the server runs as `postgres`.
    path = Path(tempfile.mkdtemp(prefix="drkit-pg-test-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def started(workdir: Path) -> Iterator[list[PgInstance]]:
    """Instances a test started; whatever is still running is stopped afterwards."""
    instances: list[PgInstance] = []
    yield instances
    for inst in instances:
        if inst.is_running() or (inst.standby is not None and inst.standby.is_running()):
            inst.stop("immediate")


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.05)


def proc_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def processes_mentioning(path: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if entry.name.isdigit() and str(path).encode() in cmdline and _pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def test_primary_write_read(workdir: Path, started: list[PgInstance]) -> None:
    pg = start_postgres(workdir)
    started.append(pg)

    assert pg.is_running()
    assert pg.host == "127.0.0.1" and pg.user == "postgres" and pg.dbname == "postgres"
    assert pg.data_dir == workdir.resolve() / "pgdata"
    assert f"port={pg.port}" in pg.dsn
    assert pg.pid is not None
    if os.geteuid() == 0:
        assert pg.os_user == "postgres"
        assert proc_uid(pg.pid) == pwd.getpwnam("postgres").pw_uid

    pg.psql(
        "CREATE TABLE patients (id int PRIMARY KEY, name text); "
        "INSERT INTO patients VALUES (1, 'Ada'), (2, 'O''Brien')"
    )
    with pg.connect() as conn:
        rows = conn.execute("SELECT id, name FROM patients ORDER BY id").fetchall()
        assert rows == [(1, "Ada"), (2, "O'Brien")]
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('data_checksums', 'wal_level', 'listen_addresses', 'archive_mode')"
            ).fetchall()
        )
    assert settings == {
        "data_checksums": "on",
        "wal_level": "replica",
        "listen_addresses": "127.0.0.1",
        "archive_mode": "off",
    }
    assert pg.psql("SELECT count(*) FROM patients") == "2"

    needs_restart = pg.set_settings({"work_mem": "7MB", "max_connections": 50})
    assert pg.psql("SHOW work_mem") == "7MB"
    assert needs_restart == ["max_connections"]

    with pytest.raises(SandboxError, match="does not exist"):
        pg.psql("SELECT * FROM no_such_table")


def test_archive_command_runs_as_server_user(workdir: Path, started: list[PgInstance]) -> None:
    archive = workdir / "archive"
    archive.mkdir()
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(archive, entry.pw_uid, entry.pw_gid)
    pg = start_postgres(workdir, archive_command=f"cp %p {archive}/%f", archive_timeout=60)
    started.append(pg)
    assert pg.psql("SHOW archive_mode") == "on"
    assert pg.psql("SHOW archive_timeout") == "1min"
    segment = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS x; SELECT pg_switch_wal()")
    # archive_command is `cp`: the file exists before it is complete, so wait for the archiver
    # to report the segment done, then check the copy.
    wait_for(
        lambda: pg.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") >= segment,
        what=f"{segment} archived",
    )
    assert (archive / segment).stat().st_size == 16 * 1024 * 1024


def test_standby_streams_writes(workdir: Path, started: list[PgInstance]) -> None:
    pg = start_postgres(workdir, standby=True)
    started.append(pg)
    standby = pg.standby
    assert standby is not None and standby.is_running()
    assert standby.port != pg.port
    assert standby.in_recovery() and not pg.in_recovery()
    state = pg.psql(
        f"SELECT state FROM pg_stat_replication WHERE application_name = '{standby.application_name}'"
    )
    assert state == "streaming"

    pg.psql("CREATE TABLE orders (id int); INSERT INTO orders SELECT generate_series(1, 100)")
    wait_for(
        lambda: "orders" in standby.psql("SELECT relname FROM pg_class WHERE relname = 'orders'"),
        what="table replicated",
    )
    wait_for(lambda: standby.psql("SELECT count(*) FROM orders") == "100", what="rows replicated")
    with standby.connect() as conn:
        assert conn.execute("SELECT sum(id) FROM orders").fetchone() == (5050,)

    pids = [pg.pid, standby.pid]
    pg.stop()
    assert not pg.is_running() and not standby.is_running()
    assert not any(_pid_alive(p) for p in pids if p is not None)
    assert port_is_free(pg.port) and port_is_free(standby.port)


def test_stop_leaves_nothing_and_restart_keeps_data(workdir: Path, started: list[PgInstance]) -> None:
    pg = start_postgres(workdir)
    started.append(pg)
    pg.psql("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    assert pg.pid is not None
    family = [pg.pid, *_descendants(pg.pid)]
    assert len(family) > 3  # postmaster + checkpointer, walwriter, ...
    assert not port_is_free(pg.port)

    pg.stop()
    assert not pg.is_running()
    assert [p for p in family if _pid_alive(p)] == []
    assert port_is_free(pg.port)
    assert not (pg.data_dir / "postmaster.pid").exists()
    pg.stop()  # stopping a stopped server is a no-op

    pg.start()
    assert pg.is_running()
    assert pg.psql("SELECT x FROM kept") == "42"


def test_kill_then_start_existing_recovers(workdir: Path, started: list[PgInstance]) -> None:
    pg = start_postgres(workdir)
    started.append(pg)
    pg.psql("CREATE TABLE committed (x int); INSERT INTO committed VALUES (1), (2), (3)")
    assert pg.pid is not None
    family = [pg.pid, *_descendants(pg.pid)]

    pg.kill()
    assert [p for p in family if _pid_alive(p)] == []
    assert (pg.data_dir / "postmaster.pid").exists()  # left as a crash leaves it

    assert port_is_free(pg.port)
    again = start_existing(pg.data_dir, pg.port)
    started.append(again)
    assert again.os_user == pg.os_user
    assert again.psql("SELECT count(*) FROM committed") == "3"
    assert "database system was interrupted" in again.log_path.read_text()


def test_start_failure_raises_with_log_tail(workdir: Path, started: list[PgInstance]) -> None:
    with pytest.raises(SandboxError) as info:
        start_postgres(workdir, settings={"shared_buffers": "plenty"})
    message = str(info.value)
    assert 'invalid value for parameter "shared_buffers"' in message
    assert str(workdir.resolve() / "postgresql.log") in message
    assert processes_mentioning(workdir.resolve() / "pgdata") == []  # nothing left running


def test_unreachable_workdir_is_refused_clearly(workdir: Path, started: list[PgInstance]) -> None:
    private = workdir / "private"
    private.mkdir(mode=0o700)
    if os.geteuid() == 0:
        with pytest.raises(SandboxError, match="cannot enter .*private"):
            start_postgres(private / "cluster")
    else:  # running as ourselves: our own 0700 directory is reachable
        started.append(start_postgres(private / "cluster"))
