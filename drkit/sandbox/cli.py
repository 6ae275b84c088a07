"""``drkit sandbox up|down|status|install``: throwaway servers for trying drkit by hand, demos, drills.

State lives in ``DIR/drkit-sandbox.json``; credentials go to files of mode 0600 in DIR and are
never printed.  Each kind is a module fulfilling the contract in :mod:`drkit.sandbox.kinds`.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import click

from drkit.sandbox.kinds import KINDS
from drkit.sandbox.procs import pid_alive as _alive

STATE = "drkit-sandbox.json"


def _load(d: Path) -> dict[str, Any]:
    try:
        return json.loads((d / STATE).read_text())
    except FileNotFoundError:
        raise click.ClickException(f"no sandbox in {d} (no {STATE})") from None


def _pids(state: dict[str, Any]) -> list[int]:
    return [int(p) for p in state.get("pids") or ([state["pid"]] if state.get("pid") else [])]


@click.group()
def sandbox() -> None:
    """Start and stop throwaway datastore and S3 servers on loopback ports."""


_KIND_HELP = "; ".join(f"{k.name}: {k.help}" for k in KINDS.values())


@sandbox.command(help=f"Start a KIND server in DIR and leave it running. Kinds: {_KIND_HELP}.")
@click.argument("kind", type=click.Choice(list(KINDS)))
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Work directory (created; must be enterable by the postgres OS user for postgres).")
@click.option("--nodes", type=int, default=1, show_default=True,
              help="postgres: 2 adds a streaming standby; redis: 2 adds a replica; cassandra: 1 or 3.")
@click.option("--json", "as_json", is_flag=True)
def up(kind: str, directory: Path, nodes: int, as_json: bool) -> None:
    directory = directory.absolute()
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / STATE).exists():
        raise click.ClickException(f"{directory} already holds a sandbox; run 'drkit sandbox down {directory}'")
    directory.chmod(0o755)
    state = {"kind": kind, **KINDS[kind].start(directory / kind, nodes)}
    (directory / STATE).write_text(json.dumps(state, indent=1))
    where = state.get("dsn") or state.get("url") or state.get("endpoint_url") or state.get("hosts")
    click.echo(json.dumps(state, indent=1) if as_json else f"{kind} sandbox up in {directory}: {where}")


@sandbox.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def status(directory: Path, as_json: bool) -> None:
    """Show what runs in DIR (exit 1 unless every server process is alive)."""
    state = _load(directory)
    pids = _pids(state)
    state["running"] = bool(pids) and all(_alive(p) for p in pids)
    click.echo(json.dumps(state, indent=1) if as_json else
               f"{state['kind']}: {'running' if state['running'] else 'stopped'} (pids {pids})")
    if not state["running"]:
        raise SystemExit(1)


@sandbox.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def down(directory: Path) -> None:
    """Stop everything started in DIR (no process is left behind)."""
    state = _load(directory)
    pids = _pids(state)
    try:
        KINDS[state["kind"]].stop(state)
    finally:
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    (directory / STATE).unlink()
    click.echo(f"{state['kind']} sandbox in {directory} stopped")


@sandbox.command()
@click.argument("kinds", nargs=-1, type=click.Choice(list(KINDS)))
def install(kinds: tuple[str, ...]) -> None:
    """Fetch or build the servers of KINDS (default: all) into the cache; quick when warm."""
    for name in kinds or tuple(KINDS):
        click.echo(f"{name}: {KINDS[name].install()}")
