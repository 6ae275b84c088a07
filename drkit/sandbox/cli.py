"""``drkit sandbox up|down|status``: throwaway servers for trying drkit by hand, demos and drills.

State lives in ``DIR/drkit-sandbox.json``; S3 credentials go to ``DIR/s3-credentials`` (mode
0600) and are never printed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import click

STATE = "drkit-sandbox.json"
KINDS = ("postgres", "s3", "s3-versitygw")


def _load(d: Path) -> dict[str, Any]:
    try:
        return json.loads((d / STATE).read_text())
    except FileNotFoundError:
        raise click.ClickException(f"no sandbox in {d} (no {STATE})") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@click.group()
def sandbox() -> None:
    """Start and stop throwaway datastore and S3 servers on loopback ports."""


@sandbox.command()
@click.argument("kind", type=click.Choice(KINDS))
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Work directory (created; must be enterable by the postgres OS user for postgres).")
@click.option("--nodes", type=int, default=1, show_default=True, help="postgres: 2 adds a streaming standby.")
@click.option("--json", "as_json", is_flag=True)
def up(kind: str, directory: Path, nodes: int, as_json: bool) -> None:
    """Start a KIND server in DIR and leave it running."""
    directory = directory.absolute()
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / STATE).exists():
        raise click.ClickException(f"{directory} already holds a sandbox; run 'drkit sandbox down {directory}'")
    if kind == "postgres":
        from drkit.sandbox.postgres import start_postgres

        directory.chmod(0o755)
        inst = start_postgres(directory / "postgres", standby=nodes > 1)
        state: dict[str, Any] = {
            "kind": kind, "dsn": inst.dsn, "port": inst.port, "pid": inst.pid, "data_dir": str(inst.data_dir),
            "bin_dir": str(inst.bin_dir), "os_user": inst.os_user, "log": str(inst.log_path),
            "standby": ({"dsn": inst.standby.dsn, "port": inst.standby.port, "pid": inst.standby.pid,
                         "data_dir": str(inst.standby.data_dir)} if inst.standby else None),
        }
    else:
        from drkit.sandbox.s3 import start_moto, start_versitygw

        server = (start_moto if kind == "s3" else start_versitygw)(directory / kind)
        creds = directory / "s3-credentials"
        creds.write_text(f"AWS_ACCESS_KEY_ID={server.access_key}\nAWS_SECRET_ACCESS_KEY={server.secret_key}\n"
                         f"AWS_DEFAULT_REGION={server.region}\n")
        creds.chmod(0o600)
        state = {"kind": kind, "endpoint_url": server.endpoint_url, "pid": server.pid, "region": server.region,
                 "credentials_file": str(creds), "log": str(server.log_path)}
        server.proc = None  # leave it running
    (directory / STATE).write_text(json.dumps(state, indent=1))
    click.echo(json.dumps(state, indent=1) if as_json else f"{kind} sandbox up in {directory}: "
               + (state.get("dsn") or state.get("endpoint_url")))


@sandbox.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def status(directory: Path, as_json: bool) -> None:
    """Show what runs in DIR."""
    state = _load(directory)
    state["running"] = _alive(int(state["pid"])) if state.get("pid") else False
    click.echo(json.dumps(state, indent=1) if as_json else
               f"{state['kind']}: {'running' if state['running'] else 'stopped'} (pid {state.get('pid')})")
    if not state["running"]:
        raise SystemExit(1)


@sandbox.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def down(directory: Path) -> None:
    """Stop everything started in DIR (no process is left behind)."""
    state = _load(directory)
    if state["kind"] == "postgres":
        dirs = [state["data_dir"]] + ([state["standby"]["data_dir"]] if state.get("standby") else [])
        for data_dir in reversed(dirs):
            subprocess.run(["runuser", "-u", state["os_user"], "--", str(Path(state["bin_dir"]) / "pg_ctl"),
                            "-D", data_dir, "-m", "fast", "-w", "stop"] if os.geteuid() == 0 else
                           [str(Path(state["bin_dir"]) / "pg_ctl"), "-D", data_dir, "-m", "fast", "-w", "stop"],
                           capture_output=True, check=False, timeout=120)
    pids = [int(state["pid"])] + ([int(state["standby"]["pid"])] if state.get("standby") else [])
    for pid in pids:
        if _alive(pid) and state["kind"] != "postgres":
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    (directory / STATE).unlink()
    click.echo(f"{state['kind']} sandbox in {directory} stopped")
