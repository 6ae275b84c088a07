"""Replay MongoDB oplog entries into a running server with ordinary commands only.

The caller decides which entries to pass (it stops at the point in time); :class:`OplogApplier`
applies each one as MongoDB's own oplog application would -- but with plain CRUD and DDL commands
(insert / replace / update / delete, ``create``, ``drop``, ``renameCollection``,
``dropDatabase``, ``createIndexes``, ``dropIndexes``, ``collMod``), never the ``applyOps``
command, which many servers (and the test server) refuse.

Entry formats (MongoDB 4.4 -- 7.0; see ``src/mongo/db/repl/oplog_entry.idl`` and the command table
``kOpsMap`` in ``src/mongo/db/repl/oplog.cpp`` of github:mongodb/mongo, and the cases in
``tests/fixtures/mongodb/oplog_real_format.json``):

- ``i`` insert; ``u`` update: ``o`` is ``{"$v": 2, "diff": ...}`` (5.0+: the current document is
  read by ``o2._id``, :func:`~drkit.dumpers.mongodb.diff.apply_diff` applied and the result written
  with ``replace_one``), an operator update (``$set``/``$unset``..., with or without ``$v: 1``:
  ``update_one(o2, o)`` minus ``$v``) or a replacement (``replace_one(o2, o)``); ``d`` delete;
  ``n`` no-op (skipped).  Entries with ``fromMigrate: true`` (chunk migrations) are skipped.
- ``c`` commands: ``create`` (all options passed through; a view when it has ``viewOn``; the
  ``create`` of ``system.buckets.X`` with ``timeseries`` becomes ``create X`` with its
  ``timeseries`` / ``expireAfterSeconds`` options, which creates the buckets and the view),
  ``drop``, ``renameCollection`` (``to``, ``dropTarget``, ``stayTemp``), ``dropDatabase``,
  ``createIndexes`` (the 4.4+ single-index form), ``commitIndexBuild`` (its ``indexes``; the
  ``startIndexBuild`` / ``abortIndexBuild`` entries are skipped), ``dropIndexes`` (also spelt
  ``deleteIndexes``), ``collMod`` (options passed through), ``applyOps`` without ``lsid``
  (nested entries applied in order).  Views stored as documents of ``DB.system.views`` (how
  MongoDB records a view) are replayed as ``create`` / ``drop`` / ``collMod`` of the view.
- Transactions, keyed by (``lsid``, ``txnNumber``): an ``applyOps`` with ``partialTxn: true`` is
  buffered; the final ``applyOps`` without ``partialTxn`` (and without ``prepare``) commits the
  whole transaction; an ``applyOps`` with ``prepare: true`` waits for ``commitTransaction``
  (applied whole) or ``abortTransaction`` (discarded).  Nothing of a transaction is written
  before its commit; one still pending at :meth:`OplogApplier.close` is discarded and counted.
  A transaction whose earlier entries were not passed (the commit's ``prevOpTime`` names an entry
  the applier never saw) raises :class:`~drkit.errors.IntegrityError`: replay must start at or
  before a transaction's first entry.

Namespaces: entries on unwanted namespaces are counted as ``filtered``; wanted ones are written
to :meth:`Namespaces.target` (commands too: ``create``/``drop``/``renameCollection``'s source and
``to``, a view's ``viewOn``).  ``dropDatabase`` becomes ``dropDatabase`` of
:meth:`Namespaces.target_db` only when every collection of that database is wanted and lands in
one database; otherwise the wanted collections of it found on the target are dropped one by one.
A rename from an unwanted into a wanted namespace cannot be replayed (the data is not in the
restore) and raises IntegrityError naming both; one from a wanted to an unwanted namespace drops
the source.

``tolerant=True`` (the window recorded during a full backup, where documents may already reflect
later changes, like ``mongorestore --oplogReplay``): inserts are upserts (replace by ``_id``), an
update of a missing document is skipped, a delete of a missing one is fine, ``create`` of an
existing collection, ``drop`` / ``collMod`` / ``dropIndexes`` of a missing collection or index
and ``renameCollection`` of a missing source are fine, and a rename onto an existing target
replaces it.  ``tolerant=False`` differs only there: inserts are plain inserts (a duplicate
``_id`` fails), and an update / replace / delete that matches no document, or any of those
commands failing, raises.  Skipped no-effect operations are counted as ``skipped``.

Errors: a failed operation raises :class:`~drkit.errors.SourceError` naming the entry's ``ts``,
``op`` and ``ns`` and the server's message (never the document); an unknown op or command raises
:class:`~drkit.errors.IntegrityError` naming it.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import bson
from bson.binary import UuidRepresentation
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.datetime_ms import DatetimeMS
from bson.timestamp import Timestamp

from drkit.errors import ConfigError, IntegrityError, SourceError

from .diff import DiffError, apply_diff
from .namespaces import Namespaces, split_ns

if TYPE_CHECKING:  # pragma: no cover
    import pymongo

DECODE_OPTS: CodecOptions = CodecOptions(
    document_class=dict,
    tz_aware=True,
    tzinfo=_dt.UTC,
    uuid_representation=UuidRepresentation.UNSPECIFIED,
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,
)

# MongoDB error codes the tolerant mode accepts (src/mongo/base/error_codes.yml)
NAMESPACE_NOT_FOUND = 26
INDEX_NOT_FOUND = 27
NAMESPACE_EXISTS = 48
INDEX_ALREADY_EXISTS = 68

_BUCKETS = "system.buckets."
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
_NULL_TS = Timestamp(0, 0)


def entry_time_ms(entry: Mapping[str, Any]) -> int:
    """The entry's time in ms since the epoch: ``wall`` where present, else ``ts`` seconds."""
    wall = entry.get("wall")
    if isinstance(wall, DatetimeMS):
        return int(wall)
    if isinstance(wall, _dt.datetime):
        if wall.tzinfo is None:
            wall = wall.replace(tzinfo=_dt.UTC)
        return (wall - _EPOCH) // _dt.timedelta(milliseconds=1)
    ts = entry.get("ts")
    if not isinstance(ts, Timestamp):
        raise IntegrityError(f"oplog entry has neither 'wall' nor a 'ts' timestamp (op {entry.get('op')!r})")
    return ts.time * 1000


@dataclass
class ReplayStats:
    applied: dict[str, int] = field(default_factory=dict)
    noops: int = 0
    filtered: int = 0  # entries (or transaction operations) on unwanted namespaces
    transactions: int = 0  # committed transactions applied
    transactions_discarded: int = 0  # begun but not committed by the end of the replay
    transactions_aborted: int = 0  # abortTransaction seen
    skipped: int = 0  # tolerated no-effect operations (update of a missing document, ...)

    def count(self, kind: str) -> None:
        self.applied[kind] = self.applied.get(kind, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "applied": dict(sorted(self.applied.items())),
            "noops": self.noops,
            "filtered": self.filtered,
            "transactions": self.transactions,
            "transactions_discarded": self.transactions_discarded,
            "transactions_aborted": self.transactions_aborted,
            "skipped": self.skipped,
        }


# --------------------------------------------------------------------------------------------
# Where the operations go


class SinkError(Exception):
    """A write the server refused: ``code`` (None when unknown or a connection failure)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class Sink(Protocol):
    """The few operations replay needs from a server (MongoSink; fakes in unit tests)."""

    def find_by_id(self, ns: str, _id: Any) -> dict[str, Any] | None: ...
    def insert(self, ns: str, doc: Mapping[str, Any]) -> None: ...
    def upsert(self, ns: str, doc: Mapping[str, Any]) -> None: ...
    def replace(self, ns: str, query: Mapping[str, Any], doc: Mapping[str, Any]) -> bool: ...
    def update(self, ns: str, query: Mapping[str, Any], update: Mapping[str, Any]) -> bool: ...
    def delete(self, ns: str, query: Mapping[str, Any]) -> bool: ...
    def command(self, db: str, cmd: Mapping[str, Any]) -> None: ...
    def database_names(self) -> list[str]: ...
    def collection_names(self, db: str) -> list[str]: ...


class MongoSink:
    """A :class:`Sink` over a pymongo client; documents are read with :data:`DECODE_OPTS`."""

    def __init__(self, client: pymongo.MongoClient) -> None:
        self._client = client

    def _coll(self, ns: str) -> Any:
        db, coll = split_ns(ns)
        return self._client.get_database(db, codec_options=DECODE_OPTS).get_collection(coll or "")

    @staticmethod
    def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        from pymongo.errors import OperationFailure, PyMongoError

        try:
            return fn(*args, **kwargs)
        except OperationFailure as exc:
            details = exc.details or {}
            msg = str(details.get("errmsg") or "operation failed")
            name = details.get("codeName")
            raise SinkError(f"{msg} ({name}, code {exc.code})" if name else f"{msg} (code {exc.code})", exc.code) from None
        except PyMongoError as exc:
            raise SinkError(f"{type(exc).__name__}: {exc}") from None

    def find_by_id(self, ns: str, _id: Any) -> dict[str, Any] | None:
        return self._call(self._coll(ns).find_one, {"_id": _id})

    def insert(self, ns: str, doc: Mapping[str, Any]) -> None:
        self._call(self._coll(ns).insert_one, dict(doc))

    def upsert(self, ns: str, doc: Mapping[str, Any]) -> None:
        self._call(self._coll(ns).replace_one, {"_id": doc["_id"]}, dict(doc), upsert=True)

    def replace(self, ns: str, query: Mapping[str, Any], doc: Mapping[str, Any]) -> bool:
        return self._call(self._coll(ns).replace_one, dict(query), dict(doc)).matched_count > 0

    def update(self, ns: str, query: Mapping[str, Any], update: Mapping[str, Any]) -> bool:
        return self._call(self._coll(ns).update_one, dict(query), dict(update)).matched_count > 0

    def delete(self, ns: str, query: Mapping[str, Any]) -> bool:
        return self._call(self._coll(ns).delete_one, dict(query)).deleted_count > 0

    def command(self, db: str, cmd: Mapping[str, Any]) -> None:
        self._call(self._client.get_database(db, codec_options=DECODE_OPTS).command, dict(cmd))

    def database_names(self) -> list[str]:
        return list(self._call(self._client.list_database_names))

    def collection_names(self, db: str) -> list[str]:
        return list(self._call(self._client.get_database(db).list_collection_names))


# --------------------------------------------------------------------------------------------
# The applier


@dataclass
class _Txn:
    ops: list[Mapping[str, Any]] = field(default_factory=list)
    prepared: bool = False


def _describe(entry: Mapping[str, Any]) -> str:
    ts = entry.get("ts")
    ts_s = f"Timestamp({ts.time}, {ts.inc})" if isinstance(ts, Timestamp) else repr(ts)
    return f"ts {ts_s} op {entry.get('op')!r} ns {entry.get('ns')!r}"


def _index_spec(o: Mapping[str, Any], command: str | None) -> dict[str, Any]:
    """An index spec for ``createIndexes``: without the command key and the legacy ``ns``, and
    without ``v: 2`` (the default of every supported server; some MongoDB-wire servers refuse it)."""
    return {k: v for k, v in o.items() if k not in (command, "ns") and not (k == "v" and v == 2)}


def _command_name(o: Mapping[str, Any]) -> str:
    return next(iter(o), "") if isinstance(o, Mapping) else ""


class OplogApplier:
    """Apply oplog entries (decoded with :data:`DECODE_OPTS`) one by one; see the module docstring."""

    def __init__(
        self,
        client: pymongo.MongoClient | None,
        namespaces: Namespaces,
        *,
        tolerant: bool = True,
        sink: Sink | None = None,
    ) -> None:
        if sink is None:
            if client is None:
                raise ValueError("OplogApplier needs a client or a sink")
            sink = MongoSink(client)
        self._sink: Sink = sink
        self._ns = namespaces
        self._tolerant = tolerant
        self._pending: dict[tuple[bytes, int], _Txn] = {}
        self.stats = ReplayStats()
        self._closed = False

    # -- public ------------------------------------------------------------------------------
    @property
    def tolerant(self) -> bool:
        return self._tolerant

    @tolerant.setter
    def tolerant(self, value: bool) -> None:
        """Switch modes between sources (a restore: tolerant over a backup's window, strict after);
        transactions still pending carry over."""
        self._tolerant = value

    def apply(self, entry: Mapping[str, Any]) -> None:
        """Apply one top-level oplog entry (a transaction's entries are buffered until its commit)."""
        if self._closed:
            raise RuntimeError("OplogApplier.apply after close()")
        if entry.get("fromMigrate"):
            self.stats.noops += 1
            return
        op = entry.get("op")
        o = entry.get("o")
        if op == "c" and isinstance(o, Mapping) and "lsid" in entry and "txnNumber" in entry:
            name = _command_name(o)
            if name in ("applyOps", "commitTransaction", "abortTransaction"):
                self._transaction(entry, name, o)
                return
        self._apply_one(entry, entry)

    def close(self) -> ReplayStats:
        """Discard transactions still pending (not committed by the last entry) and return the stats."""
        if not self._closed:
            self.stats.transactions_discarded += len(self._pending)
            self._pending.clear()
            self._closed = True
        return self.stats

    @property
    def pending_transactions(self) -> int:
        return len(self._pending)

    # -- transactions ------------------------------------------------------------------------
    @staticmethod
    def _txn_key(entry: Mapping[str, Any]) -> tuple[bytes, int]:
        lsid = entry["lsid"]
        raw = bson.encode(dict(lsid)) if isinstance(lsid, Mapping) else repr(lsid).encode()
        return raw, int(entry["txnNumber"])

    def _txn_id(self, entry: Mapping[str, Any]) -> str:
        lsid = entry.get("lsid")
        sid = lsid.get("id") if isinstance(lsid, Mapping) else None
        sid_s = bytes(sid).hex() if isinstance(sid, bytes | bytearray) else "?"
        return f"session {sid_s} txnNumber {entry.get('txnNumber')}"

    def _transaction(self, entry: Mapping[str, Any], name: str, o: Mapping[str, Any]) -> None:
        key = self._txn_key(entry)
        txn = self._pending.get(key)
        if name == "abortTransaction":
            self._pending.pop(key, None)
            self.stats.transactions_aborted += 1
            return
        if name == "commitTransaction":
            if txn is None or not txn.prepared:
                raise IntegrityError(
                    f"oplog entry {_describe(entry)}: commitTransaction of {self._txn_id(entry)} whose "
                    "prepared applyOps entry was not replayed (the transaction began before the first "
                    "replayed entry); replay must start at or before a transaction's first entry"
                )
            del self._pending[key]
            self._commit(entry, txn.ops)
            return
        ops = o.get("applyOps")
        if not isinstance(ops, list):
            raise IntegrityError(f"oplog entry {_describe(entry)}: applyOps is not a list")
        if txn is None:
            prev = entry.get("prevOpTime")
            prev_ts = prev.get("ts") if isinstance(prev, Mapping) else None
            if isinstance(prev_ts, Timestamp) and prev_ts != _NULL_TS:
                raise IntegrityError(
                    f"oplog entry {_describe(entry)}: {self._txn_id(entry)} continues an entry at ts "
                    f"Timestamp({prev_ts.time}, {prev_ts.inc}) that was not replayed (the transaction began before the "
                    "first replayed entry); replay must start at or before a transaction's first entry"
                )
            txn = _Txn()
        elif txn.prepared:
            raise IntegrityError(
                f"oplog entry {_describe(entry)}: applyOps for {self._txn_id(entry)} after its prepare entry"
            )
        txn.ops.extend(ops)
        if o.get("partialTxn"):
            self._pending[key] = txn
        elif o.get("prepare"):
            txn.prepared = True
            self._pending[key] = txn
        else:
            self._pending.pop(key, None)
            self._commit(entry, txn.ops)

    def _commit(self, entry: Mapping[str, Any], ops: Sequence[Mapping[str, Any]]) -> None:
        for op in ops:
            self._apply_nested(entry, op)
        self.stats.transactions += 1

    def _apply_nested(self, parent: Mapping[str, Any], op: Any) -> None:
        if not isinstance(op, Mapping):
            raise IntegrityError(f"oplog entry {_describe(parent)}: an applyOps element is not a document")
        if op.get("fromMigrate"):
            self.stats.noops += 1
            return
        self._apply_one(op, parent)

    # -- one operation -----------------------------------------------------------------------
    def _fail(self, ctx: Mapping[str, Any], entry: Mapping[str, Any], what: str, exc: SinkError) -> SourceError:
        where = _describe(ctx)
        if entry is not ctx:
            where += f" (its {entry.get('op')!r} on {entry.get('ns')!r})"
        return SourceError(f"replaying oplog entry {where}: {what} failed: {exc}")

    def _missing(self, ctx: Mapping[str, Any], entry: Mapping[str, Any], what: str) -> None:
        if self._tolerant:
            self.stats.skipped += 1
            return
        where = _describe(ctx)
        if entry is not ctx:
            where += f" (its {entry.get('op')!r} on {entry.get('ns')!r})"
        raise IntegrityError(
            f"replaying oplog entry {where}: {what} matched no document on the target (strict replay); "
            "the target does not hold the state this entry was recorded against"
        )

    def _apply_one(self, entry: Mapping[str, Any], ctx: Mapping[str, Any]) -> None:
        op = entry.get("op")
        if op == "n":
            self.stats.noops += 1
            return
        if op in ("i", "u", "d"):
            self._crud(entry, ctx, op)
            return
        if op == "c":
            self._command(entry, ctx)
            return
        raise IntegrityError(
            f"oplog entry {_describe(ctx)}: unknown oplog op {op!r}; drkit replays i, u, d, n and c entries"
        )

    def _crud(self, entry: Mapping[str, Any], ctx: Mapping[str, Any], op: str) -> None:
        ns = entry.get("ns")
        o = entry.get("o")
        if not isinstance(ns, str) or not isinstance(o, Mapping):
            raise IntegrityError(f"oplog entry {_describe(ctx)}: malformed {op!r} entry (no ns or o)")
        db, coll = split_ns(ns)
        if coll == "system.views":
            self._view_doc(entry, ctx, op, db, o)
            return
        if not self._ns.wanted(ns):
            self.stats.filtered += 1
            return
        target = self._ns.target(ns)
        try:
            if op == "i":
                if self._tolerant:
                    self._sink.upsert(target, o)
                else:
                    self._sink.insert(target, o)
                self.stats.count("insert")
            elif op == "d":
                if self._sink.delete(target, o):
                    self.stats.count("delete")
                else:
                    self._missing(ctx, entry, "delete")
            else:
                self._update(entry, ctx, target, o)
        except SinkError as exc:
            raise self._fail(ctx, entry, {"i": "insert", "u": "update", "d": "delete"}[op], exc) from None

    def _update(self, entry: Mapping[str, Any], ctx: Mapping[str, Any], target: str, o: Mapping[str, Any]) -> None:
        o2 = entry.get("o2")
        if not isinstance(o2, Mapping) or "_id" not in o2:
            raise IntegrityError(f"oplog entry {_describe(ctx)}: update without o2._id")
        if o.get("$v") == 2 and "diff" in o:
            current = self._sink.find_by_id(target, o2["_id"])
            if current is None:
                self._missing(ctx, entry, "$v:2 update")
                return
            try:
                new_doc = apply_diff(current, o["diff"])
            except DiffError as exc:
                raise IntegrityError(f"oplog entry {_describe(ctx)}: {exc}") from None
            self._sink.replace(target, {"_id": o2["_id"]}, new_doc)
            self.stats.count("update")
            return
        operators = {k: v for k, v in o.items() if k != "$v"}
        post = operators.get("$set")
        if list(operators) == ["$set"] and isinstance(post, Mapping) and "_id" in post and post["_id"] == o2["_id"]:
            # A whole post-image under $set, _id included: how FerretDB logs every update (it
            # records no removed fields).  Real MongoDB never writes it ($set cannot name _id),
            # so it is read as what it is: the document after the update -- a replacement.
            if self._sink.replace(target, {"_id": o2["_id"]}, dict(post)):
                self.stats.count("replace")
            else:
                self._missing(ctx, entry, "replacement")
            return
        if any(k.startswith("$") for k in operators):
            if not all(k.startswith("$") for k in operators):
                raise IntegrityError(f"oplog entry {_describe(ctx)}: update mixes operators and fields")
            if self._sink.update(target, o2, operators):
                self.stats.count("update")
            else:
                self._missing(ctx, entry, "update")
            return
        if "$v" in o:
            raise IntegrityError(f"oplog entry {_describe(ctx)}: update with '$v': {o['$v']!r} and no diff or operators")
        if self._sink.replace(target, o2, o):
            self.stats.count("replace")
        else:
            self._missing(ctx, entry, "replacement")

    # -- views stored as documents of DB.system.views ----------------------------------------
    def _view_doc(self, entry: Mapping[str, Any], ctx: Mapping[str, Any], op: str, db: str, o: Mapping[str, Any]) -> None:
        view_ns = o.get("_id") if op != "u" else (entry.get("o2") or {}).get("_id")
        if not isinstance(view_ns, str) or not self._ns.wanted(view_ns):
            self.stats.filtered += 1
            return
        t_db, t_coll = split_ns(self._ns.target(view_ns))
        if op == "d":
            self._run(ctx, t_db, {"drop": t_coll}, ok=(NAMESPACE_NOT_FOUND,), kind="drop")
            return
        if op == "u":
            if o.get("$v") == 2 and "diff" in o:
                raise IntegrityError(
                    f"oplog entry {_describe(ctx)}: a $v:2 update of a view definition in {db}.system.views "
                    "cannot be replayed with ordinary commands (the server's view catalog holds the pre-image)"
                )
            if any(k.startswith("$") for k in o):
                raise IntegrityError(
                    f"oplog entry {_describe(ctx)}: an operator update of a view definition in "
                    f"{db}.system.views cannot be replayed with ordinary commands"
                )
            view_on = o.get("viewOn")
            if not isinstance(view_on, str):
                raise IntegrityError(f"oplog entry {_describe(ctx)}: view definition without viewOn")
            cmd = {"collMod": t_coll, "viewOn": self._view_on(ctx, db, view_on, t_db), "pipeline": o.get("pipeline", [])}
            self._run(ctx, t_db, cmd, ok=(), kind="collMod")
            return
        view_on = o.get("viewOn")
        if not isinstance(view_on, str):
            raise IntegrityError(f"oplog entry {_describe(ctx)}: view definition without viewOn")
        if view_on.startswith(_BUCKETS):
            self.stats.noops += 1  # a time-series view: created with its buckets collection
            return
        cmd = {"create": t_coll, "viewOn": self._view_on(ctx, db, view_on, t_db), "pipeline": o.get("pipeline", [])}
        if "collation" in o:
            cmd["collation"] = o["collation"]
        # MongoDB may log both a create command and this insert for one view
        self._run(ctx, t_db, cmd, ok=(NAMESPACE_EXISTS,), kind="create", always_ok=True)

    def _view_on(self, ctx: Mapping[str, Any], db: str, view_on: str, t_db: str) -> str:
        on_db, on_coll = split_ns(self._ns.target(f"{db}.{view_on}"))
        if on_db != t_db or on_coll is None:
            raise IntegrityError(
                f"oplog entry {_describe(ctx)}: the view's source {db}.{view_on} is renamed into database "
                f"{on_db!r}, not the view's database {t_db!r}; a view must stay in its source's database"
            )
        return on_coll

    # -- commands ----------------------------------------------------------------------------
    def _run(
        self,
        ctx: Mapping[str, Any],
        db: str,
        cmd: Mapping[str, Any],
        *,
        ok: Iterable[int],
        kind: str,
        always_ok: bool = False,
    ) -> None:
        try:
            self._sink.command(db, cmd)
        except SinkError as exc:
            if exc.code is not None and exc.code in tuple(ok) and (self._tolerant or always_ok):
                self.stats.skipped += 1
                return
            raise SourceError(f"replaying oplog entry {_describe(ctx)}: {kind} on {db!r} failed: {exc}") from None
        self.stats.count(kind)

    def _command(self, entry: Mapping[str, Any], ctx: Mapping[str, Any]) -> None:
        ns = entry.get("ns")
        o = entry.get("o")
        if not isinstance(ns, str) or not isinstance(o, Mapping) or not o:
            raise IntegrityError(f"oplog entry {_describe(ctx)}: malformed command entry (no ns or o)")
        db, _ = split_ns(ns)
        name = _command_name(o)
        handler = _COMMANDS.get(name)
        if handler is None:
            if name in ("commitTransaction", "abortTransaction"):
                raise IntegrityError(f"oplog entry {_describe(ctx)}: {name} without lsid/txnNumber")
            raise IntegrityError(
                f"oplog entry {_describe(ctx)}: unknown oplog command {name!r}; drkit cannot replay it "
                "(restore from a backup taken after it, or report the command)"
            )
        handler(self, entry, ctx, db, o)

    def _coll_arg(self, ctx: Mapping[str, Any], o: Mapping[str, Any], name: str) -> str:
        coll = o.get(name)
        if not isinstance(coll, str) or not coll:
            raise IntegrityError(f"oplog entry {_describe(ctx)}: {name} without a collection name")
        return coll

    def _wanted_target(self, db: str, coll: str) -> tuple[str, str] | None:
        ns = f"{db}.{coll}"
        if not self._ns.wanted(ns):
            self.stats.filtered += 1
            return None
        t_db, t_coll = split_ns(self._ns.target(ns))
        return t_db, t_coll or ""

    def _cmd_create(self, entry: Mapping[str, Any], ctx: Mapping[str, Any], db: str, o: Mapping[str, Any]) -> None:
        coll = self._coll_arg(ctx, o, "create")
        tgt = self._wanted_target(db, coll)
        if tgt is None:
            return
        t_db, t_coll = tgt
        opts = {k: v for k, v in o.items() if k not in ("create", "idIndex")}
        if coll.startswith(_BUCKETS) and "timeseries" in opts:
            if not t_coll.startswith(_BUCKETS):
                raise ConfigError(
                    f"--ns-from/--ns-to rename the time-series buckets {db}.{coll} to {t_db}.{t_coll}; "
                    "a rename must keep the 'system.buckets.' prefix"
                )
            cmd: dict[str, Any] = {"create": t_coll[len(_BUCKETS):], "timeseries": opts["timeseries"]}
            if "expireAfterSeconds" in opts:
                cmd["expireAfterSeconds"] = opts["expireAfterSeconds"]
        else:
            cmd = {"create": t_coll, **opts}
            if isinstance(opts.get("viewOn"), str):
                cmd["viewOn"] = self._view_on(ctx, db, opts["viewOn"], t_db)
        self._run(ctx, t_db, cmd, ok=(NAMESPACE_EXISTS,), kind="create")

    def _cmd_drop(self, entry: Mapping[str, Any], ctx: Mapping[str, Any], db: str, o: Mapping[str, Any]) -> None:
        coll = self._coll_arg(ctx, o, "drop")
        tgt = self._wanted_target(db, coll)
        if tgt is None:
            return
        self._run(ctx, tgt[0], {"drop": tgt[1]}, ok=(NAMESPACE_NOT_FOUND,), kind="drop")

    def _cmd_rename(self, entry: Mapping[str, Any], ctx: Mapping[str, Any], db: str, o: Mapping[str, Any]) -> None:
        src, to = o.get("renameCollection"), o.get("to")
        if not isinstance(src, str) or not isinstance(to, str) or "." not in src or "." not in to:
            raise IntegrityError(f"oplog entry {_describe(ctx)}: renameCollection without full 'from' and 'to' names")
        src_wanted, to_wanted = self._ns.wanted(src), self._ns.wanted(to)
        if not src_wanted and not to_wanted:
            self.stats.filtered += 1
            return
        if not src_wanted:
            raise IntegrityError(
                f"oplog entry {_describe(ctx)}: renameCollection moves {src!r}, which this restore excludes, "
                f"into {to!r}, which it includes; its documents are not in the restore -- include {src!r} too"
            )
        t_src = self._ns.target(src)
        if not to_wanted:  # the collection leaves the restored set
            s_db, s_coll = split_ns(t_src)
            self._run(ctx, s_db, {"drop": s_coll}, ok=(NAMESPACE_NOT_FOUND,), kind="drop")
            return
        t_to = self._ns.target(to)
        cmd: dict[str, Any] = {"renameCollection": t_src, "to": t_to}
        if o.get("dropTarget"):  # false, true or the dropped target's UUID
            cmd["dropTarget"] = True
        if o.get("stayTemp"):
            cmd["stayTemp"] = True
        try:
            self._sink.command("admin", cmd)
        except SinkError as exc:
            if self._tolerant and exc.code == NAMESPACE_NOT_FOUND:
                self.stats.skipped += 1  # already renamed when the backup read it
                return
            if not (self._tolerant and exc.code == NAMESPACE_EXISTS):
                raise SourceError(f"replaying oplog entry {_describe(ctx)}: renameCollection failed: {exc}") from None
            # the backup read the target after this rename: the replayed state wins (later entries
            # bring the target up to date), like dropTarget -- as two ordinary commands
            t_db, t_coll = split_ns(t_to)
            self._run(ctx, t_db, {"drop": t_coll}, ok=(NAMESPACE_NOT_FOUND,), kind="drop")
            self._run(ctx, "admin", cmd, ok=(), kind="renameCollection")
            return
        self.stats.count("renameCollection")

    def _cmd_drop_database(self, entry: Mapping[str, Any], ctx: Mapping[str, Any], db: str, o: Mapping[str, Any]) -> None:
        if not self._ns.wants_db(db):
            self.stats.filtered += 1
            return
        whole = self._ns.whole_db_target(db)
        if whole is not None:
            self._run(ctx, whole, {"dropDatabase": 1}, ok=(NAMESPACE_NOT_FOUND,), kind="dropDatabase")
            return
        # only part of db is restored (or it is spread over several databases): drop those parts
        try:
            dbs = self._sink.database_names() if self._ns.renames else [db]
            for t_db in dbs:
                for t_coll in self._sink.collection_names(t_db):
                    src = self._ns.source(f"{t_db}.{t_coll}")
                    if src is not None and split_ns(src)[0] == db and self._ns.wanted(src):
                        self._run(ctx, t_db, {"drop": t_coll}, ok=(NAMESPACE_NOT_FOUND,), kind="drop")
        except SinkError as exc:
            raise SourceError(f"replaying oplog entry {_describe(ctx)}: listing collections failed: {exc}") from None
        self.stats.count("dropDatabase")

    def _cmd_create_indexes(self, entry: Mapping[str, Any], ctx: Mapping[str, Any], db: str, o: Mapping[str, Any]) -> None:
        coll = self._coll_arg(ctx, o, "createIndexes")
        tgt = self._wanted_target(db, coll)
        if tgt is None:
            return
        spec = _index_spec(o, "createIndexes")
        if "key" not in spec or "name" not in spec:
            raise IntegrityError(f"oplog entry {_describe(ctx)}: createIndexes without key and name")
        cmd = {"createIndexes": tgt[1], "indexes": [spec]}
        self._run(ctx, tgt[0], cmd, ok=(INDEX_ALREADY_EXISTS,), kind="createIndexes")

    def _cmd_commit_index_build(self, entry: Mapping[str, Any], ctx: Mapping[str, Any], db: str, o: Mapping[str, Any]) -> None:
        coll = self._coll_arg(ctx, o, "commitIndexBuild")
        tgt = self._wanted_target(db, coll)
        if tgt is None:
            return
        indexes = o.get("indexes")
        if not isinstance(indexes, list) or not indexes:
            raise IntegrityError(f"oplog entry {_describe(ctx)}: commitIndexBuild without indexes")
        if not all(isinstance(spec, Mapping) for spec in indexes):
            raise IntegrityError(f"oplog entry {_describe(ctx)}: commitIndexBuild with a malformed index spec")
        specs = [_index_spec(spec, None) for spec in indexes]
        cmd = {"createIndexes": tgt[1], "indexes": specs}
        self._run(ctx, tgt[0], cmd, ok=(INDEX_ALREADY_EXISTS,), kind="createIndexes")

    def _cmd_index_build_marker(self, entry: Mapping[str, Any], ctx: Mapping[str, Any], db: str, o: Mapping[str, Any]) -> None:
        self.stats.noops += 1  # startIndexBuild / abortIndexBuild: the commitIndexBuild carries the specs

    def _cmd_drop_indexes(self, entry: Mapping[str, Any], ctx: Mapping[str, Any], db: str, o: Mapping[str, Any]) -> None:
        name = _command_name(o)
        coll = self._coll_arg(ctx, o, name)
        tgt = self._wanted_target(db, coll)
        if tgt is None:
            return
        if "index" not in o:
            raise IntegrityError(f"oplog entry {_describe(ctx)}: {name} without 'index'")
        cmd = {"dropIndexes": tgt[1], "index": o["index"]}
        self._run(ctx, tgt[0], cmd, ok=(INDEX_NOT_FOUND, NAMESPACE_NOT_FOUND), kind="dropIndexes")

    def _cmd_coll_mod(self, entry: Mapping[str, Any], ctx: Mapping[str, Any], db: str, o: Mapping[str, Any]) -> None:
        coll = self._coll_arg(ctx, o, "collMod")
        tgt = self._wanted_target(db, coll)
        if tgt is None:
            return
        cmd: dict[str, Any] = {"collMod": tgt[1], **{k: v for k, v in o.items() if k != "collMod"}}
        if isinstance(cmd.get("viewOn"), str):
            cmd["viewOn"] = self._view_on(ctx, db, cmd["viewOn"], tgt[0])
        self._run(ctx, tgt[0], cmd, ok=(NAMESPACE_NOT_FOUND, INDEX_NOT_FOUND), kind="collMod")

    def _cmd_apply_ops(self, entry: Mapping[str, Any], ctx: Mapping[str, Any], db: str, o: Mapping[str, Any]) -> None:
        ops = o.get("applyOps")
        if not isinstance(ops, list):
            raise IntegrityError(f"oplog entry {_describe(ctx)}: applyOps is not a list")
        if o.get("partialTxn") or o.get("prepare"):
            raise IntegrityError(
                f"oplog entry {_describe(ctx)}: transaction applyOps (partialTxn/prepare) without lsid/txnNumber"
            )
        for op in ops:
            self._apply_nested(ctx, op)
        self.stats.count("applyOps")


_COMMANDS = {
    "create": OplogApplier._cmd_create,
    "drop": OplogApplier._cmd_drop,
    "renameCollection": OplogApplier._cmd_rename,
    "dropDatabase": OplogApplier._cmd_drop_database,
    "createIndexes": OplogApplier._cmd_create_indexes,
    "commitIndexBuild": OplogApplier._cmd_commit_index_build,
    "startIndexBuild": OplogApplier._cmd_index_build_marker,
    "abortIndexBuild": OplogApplier._cmd_index_build_marker,
    "dropIndexes": OplogApplier._cmd_drop_indexes,
    "deleteIndexes": OplogApplier._cmd_drop_indexes,
    "collMod": OplogApplier._cmd_coll_mod,
    "applyOps": OplogApplier._cmd_apply_ops,
}
