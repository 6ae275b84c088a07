"""Replay recorded command slices into a Redis server, up to a point in time.

Time handling (why the two steps): the primary propagates expiries as absolute times, and a
server expires keys by its own clock.  Replaying yesterday's commands today would let the
server expire keys *during* replay that a later recorded command (a new PEXPIREAT, a PERSIST)
kept alive.  So the base and every replayed absolute time are shifted far into the future
(``shift`` = now + 100 years - snapshot time: nothing can expire while replay runs, and an
expiry not yet settled is told apart from a settled one by size alone, so keys SCAN returns
twice are settled once), and once the
commands up to T are in, :func:`settle_ttls` moves every expiry back so each key has the TTL it
had left at T -- and deletes keys whose expiry was at or before T.
"""

from __future__ import annotations

import time
from typing import Any

from drkit.errors import DrkitError
from drkit.repository import Repository
from drkit.repository.manifest import LogRecord
from drkit.repository.reader import open_stream

from .aof import iter_aof
from .replication import ReplicationLink, ReplyError
from .stream import LINK_ONLY, encode_command, iter_frames, parse_command, shift_times

SAFETY_MS = 100 * 365 * 24 * 3600 * 1000
_BATCH = 1000


def replay_shift(snapshot_ms: int, now_ms: int) -> int:
    return now_ms + SAFETY_MS - snapshot_ms


def _send_batch(link: ReplicationLink, batch: list[bytes], where: str) -> int:
    if not batch:
        return 0
    try:
        link.sock.sendall(b"".join(batch))
    except OSError as exc:
        raise DrkitError(f"lost the connection to the restore target during replay ({where}): {exc}") from None
    for _ in batch:
        reply = link.read_reply(raise_errors=False)
        errs = [reply] if isinstance(reply, ReplyError) else (
            [r for r in reply if isinstance(r, ReplyError)] if isinstance(reply, list) else [])
        if errs:
            raise DrkitError(f"replay diverged at {where}: the restored server refused a recorded command "
                             f"({errs[0]}); the restored copy is not trustworthy")
    n = len(batch)
    batch.clear()
    return n


def replay(repo: Repository, source: str, slices: list[LogRecord], link: ReplicationLink, *,
           at_ms: int, shift_ms: int) -> dict[str, Any]:
    """Send every recorded command received at or before ``at_ms`` (times shifted by ``shift_ms``)."""
    batch: list[bytes] = []
    group: list[bytes] | None = None  # MULTI ... EXEC is applied whole or not at all
    applied = link_only = 0
    last_ts: int | None = None
    where = "start"
    for rec in slices:
        with open_stream(repo, rec.stream) as reader:
            frames = (iter_aof(reader, rec.name, rec.metadata.get("ts_at_start_ms"))
                      if rec.metadata.get("format") == "aof" else iter_frames(reader, rec.name))
            for ts, raw in frames:
                if ts > at_ms:
                    applied += _send_batch(link, batch, where)
                    return {"commands_replayed": applied, "link_commands_skipped": link_only,
                            "last_command_ms": last_ts, "open_transaction_dropped": group is not None}
                where = f"slice {rec.name}"
                args = parse_command(raw)
                name = args[0].upper()
                if name in LINK_ONLY:
                    link_only += 1
                    continue
                shifted = shift_times(args, shift_ms)
                out = raw if shifted == args else encode_command(shifted)
                last_ts = ts
                if name == b"MULTI":
                    group = [out]
                elif group is not None:
                    group.append(out)
                    if name in (b"EXEC", b"DISCARD"):
                        batch.extend(group)
                        group = None
                else:
                    batch.append(out)
                if len(batch) >= _BATCH:
                    applied += _send_batch(link, batch, where)
    applied += _send_batch(link, batch, where)
    return {"commands_replayed": applied, "link_commands_skipped": link_only, "last_command_ms": last_ts,
            "open_transaction_dropped": group is not None}


def settle_ttls(link: ReplicationLink, *, at_ms: int, shift_ms: int, snapshot_ms: int) -> dict[str, int]:
    """Turn replay-time expiries into TTLs relative to ``at_ms``; delete keys expired by then.

    A key with (shifted) expiry E' had original expiry E = E' - shift_ms; it gets
    ``now + (E - at_ms)``, or is deleted when E <= at_ms.
    """
    info = link.call("INFO", "keyspace")
    assert isinstance(info, bytes)
    dbs = [int(line.split(b":")[0][2:]) for line in info.split(b"\r\n") if line.startswith(b"db")]
    moved = deleted = 0
    for db in dbs:
        link.call("SELECT", db)
        cursor = b"0"
        while True:
            reply = link.call("SCAN", cursor, "COUNT", 1000)
            assert isinstance(reply, list)
            cursor, keys = reply[0], reply[1]
            if keys:
                link.sock.sendall(b"".join(encode_command([b"PEXPIRETIME", k]) for k in keys))
                expiries = [link.read_reply() for _ in keys]
                now = time.time_ns() // 1_000_000
                cmds = []
                for k, e in zip(keys, expiries, strict=True):
                    if not isinstance(e, int) or e < shift_ms + snapshot_ms:
                        continue  # -1: no expiry, -2: gone, or settled already (SCAN repeats keys)
                    original = e - shift_ms
                    if original <= at_ms:
                        cmds.append(encode_command([b"UNLINK", k]))
                        deleted += 1
                    else:
                        cmds.append(encode_command([b"PEXPIREAT", k, str(now + original - at_ms).encode()]))
                        moved += 1
                if cmds:
                    link.sock.sendall(b"".join(cmds))
                    for _ in cmds:
                        link.read_reply()
            if cursor in (b"0", 0):
                break
    link.call("SELECT", 0)
    return {"ttls_settled": moved, "keys_expired_by_then": deleted}
