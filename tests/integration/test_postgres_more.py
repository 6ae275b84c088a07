"""PostgreSQL: backup from a streaming standby, logical backups, config/connection errors."""

from __future__ import annotations

import json
import subprocess

import psycopg
import yaml
from pgenv import DRKIT, make_pg_env

from drkit.sandbox.postgres import start_standby


def test_backup_taken_from_a_standby_restores_the_primary_data():
    env = make_pg_env("standby")
    try:
        with env.conn() as c:
            c.execute("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 5000) g")
        standby = start_standby(env.pg, env.root / "standby")
        env.restored.append(standby)
        with psycopg.connect(standby.dsn, autocommit=True) as c:
            assert c.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        cfg = yaml.safe_load(env.config_path.read_text())
        cfg["sources"]["main"]["dsn"] = standby.dsn
        env.config_path.write_text(yaml.safe_dump(cfg))
        out = json.loads(env.drkit("backup", "main", "--json").stdout)
        assert out["metadata"]["from_standby"] is True
        target = env.root / "restored"
        res = json.loads(env.drkit("restore", "main", "--backup", out["id"], "--target-dir", str(target),
                                   "--start", "--json").stdout)
        try:
            with env.restored_conn(target, res["port"]) as c:
                assert c.execute("SELECT count(*), sum(id) FROM t").fetchone() == (5000, sum(range(1, 5001)))
        finally:
            env.stop_datadir(target)
    finally:
        env.close()


def test_logical_backup_restores_one_database_into_a_server():
    env = make_pg_env("logical")
    try:
        with env.conn() as c:
            c.execute("CREATE DATABASE app")
        with psycopg.connect(env.pg.conninfo("app"), autocommit=True) as c:
            c.execute("CREATE TABLE patients (id int PRIMARY KEY, name text, attrs jsonb)")
            c.execute("INSERT INTO patients SELECT g, 'p' || g, jsonb_build_object('g', g) FROM generate_series(1, 2000) g")
        out = json.loads(env.drkit("backup", "main", "--type", "logical", "--json").stdout)
        assert out["type"] == "logical" and "app" in out["metadata"]["databases"]
        # Disaster in the app database, then restore only it into a fresh database.
        with env.conn() as c:
            c.execute("CREATE DATABASE app_restored")
        target = env.root / "dumps"
        into = env.pg.conninfo("postgres")
        proc = env.drkit("restore", "main", "--backup", out["id"], "--target-dir", str(target),
                         "--database", "app", "--into-dsn", into.replace("dbname=postgres", "dbname=app_restored"),
                         "--json")
        files = json.loads(proc.stdout)["files"]
        assert list(files) == ["app"]
        with psycopg.connect(env.pg.conninfo("app_restored"), autocommit=True) as c:
            assert c.execute("SELECT count(*), max(attrs->>'g') FROM patients").fetchone() == (2000, "999")
    finally:
        env.close()


def test_unreachable_server_and_bad_config_fail_cleanly():
    env = make_pg_env("errors")
    try:
        cfg = yaml.safe_load(env.config_path.read_text())
        cfg["sources"]["main"]["dsn"] = "host=127.0.0.1 port=1 user=postgres dbname=postgres"
        bad = env.root / "unreachable.yaml"
        bad.write_text(yaml.safe_dump(cfg))
        before = sorted(str(p) for p in (env.root / "repo").rglob("*"))
        proc = subprocess.run([DRKIT, "--config", str(bad), "backup", "main"], capture_output=True, text=True)
        assert proc.returncode == 10, proc.stderr
        assert "cannot connect" in proc.stderr
        assert sorted(str(p) for p in (env.root / "repo").rglob("*")) == before

        cfg["sources"]["main"]["dsn"] = "host=127.0.0.1 password=hunter2 user=postgres"
        bad.write_text(yaml.safe_dump(cfg))
        proc = subprocess.run([DRKIT, "--config", str(bad), "backup", "main"], capture_output=True, text=True)
        assert proc.returncode == 2 and "must not contain a password" in proc.stderr
        assert "hunter2" not in proc.stderr

        bad.write_text("repository: [unclosed\n")
        proc = subprocess.run([DRKIT, "--config", str(bad), "list"], capture_output=True, text=True)
        assert proc.returncode == 2 and "invalid YAML at line" in proc.stderr

        proc = env.drkit("restore", "nope", "--target-dir", str(env.root / "x"), check=False)
        assert proc.returncode == 2 and "no source named 'nope'" in proc.stderr
    finally:
        env.close()


def test_configuration_outside_the_data_directory_is_backed_up_and_restored():
    """Debian/Ubuntu clusters keep postgresql.conf and pg_hba.conf in /etc/postgresql: a restore
    must still start (pg_basebackup alone does not copy them)."""
    import shutil

    env = make_pg_env("etcconf")
    try:
        with env.conn() as c:
            c.execute("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 100) g")
        env.pg.stop()
        etc = env.root / "etc"
        (etc / "conf.d").mkdir(parents=True)
        for name in ("postgresql.conf", "pg_hba.conf", "pg_ident.conf"):
            shutil.move(str(env.pg.data_dir / name), str(etc / name))
        with open(etc / "postgresql.conf", "a") as fh:
            fh.write(f"\ndata_directory = '{env.pg.data_dir}'\nhba_file = '{etc}/pg_hba.conf'\n"
                     f"ident_file = '{etc}/pg_ident.conf'\ninclude_dir = 'conf.d'\n")
        for p in [etc, *etc.rglob("*")]:
            shutil.chown(p, "postgres", "postgres")
        subprocess.run(["runuser", "-u", "postgres", "--", str(env.pg.bin_dir / "pg_ctl"), "-D", str(etc),
                        "-l", str(etc / "server.log"), "-w", "start"], check=True, capture_output=True)
        out = json.loads(env.drkit("backup", "main", "--json").stdout)
        assert sorted(out["streams"]) == ["base.tar", "config/pg_hba.conf", "config/pg_ident.conf",
                                          "config/postgresql.conf"]
        target = env.root / "restored"
        res = json.loads(env.drkit("restore", "main", "--backup", out["id"], "--target-dir", str(target),
                                   "--start", "--json").stdout)
        assert any("data_directory" in d for d in res["config_settings_disabled"])
        try:
            with env.restored_conn(target, res["port"]) as c:
                assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 100
                assert c.execute("SHOW config_file").fetchone()[0] == str(target / "postgresql.conf")
        finally:
            env.stop_datadir(target)
    finally:
        env.close()


def test_restore_started_in_a_deep_directory_serves_despite_the_socket_path_limit():
    from drkit.dumpers.postgres.restore import SOCKET_PATH_MAX

    env = make_pg_env("deep")
    try:
        with env.conn() as c:
            c.execute("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 321) g")
        bid = json.loads(env.drkit("backup", "main", "--json").stdout)["id"]
        target = env.root / ("a-rather-long-directory-name-" * 3) / "restored"
        assert len(str(target)) + len("/.s.PGSQL.65535") > SOCKET_PATH_MAX
        res = json.loads(env.drkit("restore", "main", "--backup", bid, "--target-dir", str(target), "--start",
                                   "--json", "--no-sync").stdout)
        env.restored_dirs.append(target)
        try:
            assert res["socket_dir"] == "/tmp"
            with psycopg.connect(f"host={res['socket_dir']} port={res['port']} user=postgres dbname=postgres",
                                 autocommit=True) as c:
                assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 321
        finally:
            env.stop_datadir(target)
    finally:
        env.close()
