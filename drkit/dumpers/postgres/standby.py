"""Which node a full backup reads: the primary, or a streaming standby that has caught up with it.

``backup_from`` (a source setting):

- ``primary`` (the default): the node ``dsn`` names.
- ``standby``: a standby from ``standby_dsn`` / ``standbys`` (tried in order), or no backup:
  the first one that is a standby of this cluster and replays the primary's WAL up to the
  primary's current flush position within ``max_standby_lag`` seconds.  Each refusal is named.
- ``prefer-standby``: the same, but when no standby qualifies the backup reads the primary
  (a warning says why).

The lag is measured, not estimated: drkit reads the primary's ``pg_current_wal_flush_lsn()``
and waits until the standby's ``pg_last_wal_replay_lsn()`` reaches it.  A standby that does
not get there in time -- disconnected, replay paused, or just behind -- would give a backup
older than the moment it was asked for.  When the primary cannot be reached and
``backup_from`` is ``standby``, the backup goes ahead from the standby with the lag
unmeasured (a warning says so): a backup of the surviving copy is what a disaster needs.

On a standby, ``data_dir`` is the standby's data directory (drkit runs on the standby's host);
when the backup falls back to the primary, ``data_dir`` is used only if it is the primary's.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

from drkit.errors import SourceError

from .options import PgOptions, safe_dsn
from .server import connect, server_facts

log = logging.getLogger(__name__)


@dataclass
class Node:
    opts: PgOptions  # the source's options with ``dsn`` naming the node the backup reads
    facts: dict[str, Any]  # that node's server facts
    primary: dict[str, Any] | None  # the primary's facts (None: not reachable, or not known)
    standby: str | None = None  # the standby's DSN (without secrets), when a standby is read
    lag_seconds: float | None = None  # how long the standby took to catch up (None: not measured)


def _with_dsn(opts: PgOptions, dsn: str, *, keep_data_dir: bool = True) -> PgOptions:
    return dataclasses.replace(opts, dsn=dsn, data_dir=opts.data_dir if keep_data_dir else None,
                               source=getattr(opts, "_source", None))


def choose_node(source: str, opts: PgOptions) -> Node:
    if opts.backup_from == "primary":
        facts = server_facts(opts)
        return Node(opts, facts, None if facts["in_recovery"] else facts)
    primary: dict[str, Any] | None
    unreachable = ""
    try:
        primary = server_facts(opts)
    except SourceError as exc:
        primary = None
        unreachable = str(exc)
    problems: list[str] = []
    if primary is not None and primary["in_recovery"]:
        problems.append(f"dsn {safe_dsn(opts.dsn)} is itself a standby, so no lag can be measured against it")
        primary = None
        unreachable = "dsn names a standby"
    for dsn in opts.standby_dsns():
        node_opts = _with_dsn(opts, dsn)
        name = safe_dsn(dsn)
        try:
            facts = server_facts(node_opts)
        except SourceError as exc:
            problems.append(f"standby {name}: {exc}")
            continue
        if not facts["in_recovery"]:
            problems.append(f"standby {name} is not in recovery (a primary: promoted, or the wrong server)")
            continue
        if primary is not None and facts["system_identifier"] != primary["system_identifier"]:
            problems.append(f"standby {name} belongs to another cluster (system identifier "
                            f"{facts['system_identifier']}, the primary's {primary['system_identifier']})")
            continue
        if primary is None:
            if opts.backup_from == "standby":
                log.warning(f"source {source}: the primary cannot be reached ({unreachable}); backing up "
                            f"standby {name} with its lag unmeasured")
                return Node(node_opts, facts, None, name, None)
            problems.append(f"standby {name}: its lag cannot be measured without the primary ({unreachable})")
            continue
        lag, why = _catch_up(opts, node_opts, opts.max_standby_lag)
        if lag is None:
            problems.append(f"standby {name} {why}")
            continue
        log.info("source %s: backing up standby %s (caught up with the primary in %.2f s)", source, name, lag)
        return Node(node_opts, facts, primary, name, lag)
    if opts.backup_from == "prefer-standby" and primary is not None:
        log.warning(f"source {source}: no standby can be backed up ({'; '.join(problems)}); backing up the primary")
        same_dir = opts.data_dir is not None and str(opts.data_dir) == primary["data_directory"]
        return Node(_with_dsn(opts, opts.dsn, keep_data_dir=same_dir), primary, primary)
    raise SourceError(
        f"source {source}: no standby can be backed up (backup_from: {opts.backup_from}): {'; '.join(problems)}. "
        "Nothing was stored; fix the standby, raise max_standby_lag, or set backup_from: prefer-standby to "
        "fall back to the primary")


def _catch_up(primary: PgOptions, standby: PgOptions, limit: float) -> tuple[float | None, str]:
    """Seconds until ``standby`` replayed the primary's WAL up to its flush position now; or
    (None, why) when that takes longer than ``limit``."""
    with connect(primary) as conn:
        row = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
    assert row is not None
    target = row[0]
    t0 = time.monotonic()
    with connect(standby) as conn:
        while True:
            row = conn.execute(
                "SELECT coalesce(pg_last_wal_replay_lsn() >= %s::pg_lsn, false), pg_last_wal_replay_lsn()::text,"
                " pg_is_wal_replay_paused()", (target,)).fetchone()
            assert row is not None
            waited = time.monotonic() - t0
            if row[0]:
                return waited, ""
            if waited > limit:
                paused = " (WAL replay is paused)" if row[2] else ""
                return None, (f"lags behind the primary: it did not replay up to the primary's {target} within "
                              f"max_standby_lag {limit:g} s (replayed up to {row[1] or 'nothing'}){paused}")
            time.sleep(0.05)
