"""Decision logic of the MongoDB oplog replay (drkit.dumpers.mongodb.replay), without a server.

``MemorySink`` is a small in-memory stand-in for the server behind the applier's sink interface
(documents by ``_id``, collections, views, indexes and options, MongoDB's error codes for the
cases the applier tolerates).  Every case of tests/fixtures/mongodb/oplog_real_format.json runs
through it here -- including those the test server cannot run (views, collMod, time-series,
validators, cross-database renames); the integration test replays the same cases into a real
server.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import bson
import pytest
from bson.json_util import CANONICAL_JSON_OPTIONS, loads
from bson.timestamp import Timestamp

from drkit.dumpers.mongodb.namespaces import Namespaces, split_ns
from drkit.dumpers.mongodb.replay import (
    DECODE_OPTS,
    INDEX_NOT_FOUND,
    NAMESPACE_EXISTS,
    NAMESPACE_NOT_FOUND,
    OplogApplier,
    ReplayStats,
    SinkError,
    entry_time_ms,
)
from drkit.errors import IntegrityError, SourceError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mongodb" / "oplog_real_format.json"
CASES = loads(FIXTURES.read_text(), json_options=CANONICAL_JSON_OPTIONS)


def _key(_id: Any) -> bytes:
    return bson.encode({"k": _id})


def _set_path(doc: dict, path: str, value: Any) -> None:
    parts = path.split(".")
    for p in parts[:-1]:
        doc = doc.setdefault(p, {})
    doc[parts[-1]] = value


def _unset_path(doc: dict, path: str) -> None:
    parts = path.split(".")
    for p in parts[:-1]:
        doc = doc.get(p)
        if not isinstance(doc, dict):
            return
    doc.pop(parts[-1], None)


class MemorySink:
    """The applier's sink over dicts; records every call."""

    def __init__(self, before: dict[str, list[dict]] | None = None) -> None:
        self.colls: dict[str, dict[bytes, dict]] = {}
        self.views: dict[str, dict] = {}
        self.indexes: dict[str, dict[str, dict]] = {}
        self.options: dict[str, dict] = {}
        self.calls: list[tuple[Any, ...]] = []
        for ns, docs in (before or {}).items():
            self.colls[ns] = {_key(d["_id"]): dict(d) for d in docs}

    # documents
    def find_by_id(self, ns, _id):
        self.calls.append(("find", ns))
        doc = self.colls.get(ns, {}).get(_key(_id))
        return None if doc is None else dict(doc)

    def insert(self, ns, doc):
        self.calls.append(("insert", ns, doc["_id"]))
        coll = self.colls.setdefault(ns, {})
        if _key(doc["_id"]) in coll:
            raise SinkError("E11000 duplicate key error", 11000)
        coll[_key(doc["_id"])] = dict(doc)

    def upsert(self, ns, doc):
        self.calls.append(("upsert", ns, doc["_id"]))
        self.colls.setdefault(ns, {})[_key(doc["_id"])] = dict(doc)

    def replace(self, ns, query, doc):
        self.calls.append(("replace", ns, query["_id"]))
        coll = self.colls.get(ns, {})
        if _key(query["_id"]) not in coll:
            return False
        coll[_key(query["_id"])] = {"_id": query["_id"], **{k: v for k, v in doc.items() if k != "_id"}}
        return True

    def update(self, ns, query, update):
        self.calls.append(("update", ns, query["_id"]))
        doc = self.colls.get(ns, {}).get(_key(query["_id"]))
        if doc is None:
            return False
        for op, fields in update.items():
            for path, value in fields.items():
                if op == "$set":
                    _set_path(doc, path, value)
                elif op == "$unset":
                    _unset_path(doc, path)
                else:
                    raise SinkError(f"MemorySink: unsupported operator {op}", 9)
        return True

    def delete(self, ns, query):
        self.calls.append(("delete", ns, query["_id"]))
        return self.colls.get(ns, {}).pop(_key(query["_id"]), None) is not None

    # commands
    def _exists(self, ns):
        return ns in self.colls or ns in self.views

    def command(self, db, cmd):
        self.calls.append(("command", db, dict(cmd)))
        name = next(iter(cmd))
        arg = cmd[name]
        ns = f"{db}.{arg}" if isinstance(arg, str) and name != "renameCollection" else None
        if name == "create":
            if self._exists(ns):
                raise SinkError(f"Collection {ns} already exists.", NAMESPACE_EXISTS)
            opts = {k: v for k, v in cmd.items() if k != "create"}
            if "viewOn" in opts:
                self.views[ns] = opts
            elif "timeseries" in opts:
                self.colls[f"{db}.system.buckets.{arg}"] = {}
                self.views[ns] = {"viewOn": f"system.buckets.{arg}"}
                self.options[f"{db}.system.buckets.{arg}"] = opts
            else:
                self.colls[ns] = {}
                self.options[ns] = opts
        elif name == "drop":
            if ns in self.views:
                del self.views[ns]
            elif ns in self.colls:
                del self.colls[ns]
                self.indexes.pop(ns, None)
                self.options.pop(ns, None)
            else:
                raise SinkError(f"ns not found {ns}", NAMESPACE_NOT_FOUND)
        elif name == "renameCollection":
            src, to = cmd["renameCollection"], cmd["to"]
            if src not in self.colls:
                raise SinkError(f"Source collection {src} does not exist", NAMESPACE_NOT_FOUND)
            if self._exists(to):
                if not cmd.get("dropTarget"):
                    raise SinkError("target namespace exists", NAMESPACE_EXISTS)
                self.colls.pop(to, None)
            self.colls[to] = self.colls.pop(src)
            for table in (self.indexes, self.options):
                if src in table:
                    table[to] = table.pop(src)
        elif name == "dropDatabase":
            for table in (self.colls, self.views, self.indexes, self.options):
                for k in [k for k in table if split_ns(k)[0] == db]:
                    del table[k]
        elif name == "createIndexes":
            self.colls.setdefault(ns, {})
            for spec in cmd["indexes"]:
                have = self.indexes.setdefault(ns, {}).get(spec["name"])
                if have is not None and have != spec:
                    raise SinkError("An equivalent index already exists with a different name or options", 85)
                self.indexes[ns][spec["name"]] = dict(spec)
        elif name == "dropIndexes":
            if ns not in self.colls:
                raise SinkError(f"ns not found {ns}", NAMESPACE_NOT_FOUND)
            if self.indexes.get(ns, {}).pop(cmd["index"], None) is None:
                raise SinkError(f"index not found with name [{cmd['index']}]", INDEX_NOT_FOUND)
        elif name == "collMod":
            if not self._exists(ns):
                raise SinkError(f"ns does not exist: {ns}", NAMESPACE_NOT_FOUND)
            for k, v in cmd.items():
                if k == "collMod":
                    continue
                if k == "index":
                    spec = self.indexes.get(ns, {}).get(v["name"])
                    if spec is None:
                        raise SinkError("cannot find index", INDEX_NOT_FOUND)
                    spec.update({kk: vv for kk, vv in v.items() if kk != "name"})
                elif ns in self.views:
                    self.views[ns][k] = v
                else:
                    self.options.setdefault(ns, {})[k] = v
        else:
            raise SinkError(f"no such command: '{name}'", 59)

    def database_names(self):
        return sorted({split_ns(ns)[0] for ns in [*self.colls, *self.views]})

    def collection_names(self, db):
        return sorted(split_ns(ns)[1] for ns in [*self.colls, *self.views] if split_ns(ns)[0] == db)

    # helpers for assertions
    def docs(self, ns):
        return sorted(self.colls.get(ns, {}).values(), key=lambda d: _key(d["_id"]))

    def writes(self):
        return [c for c in self.calls if c[0] != "find"]


def _bson_docs(docs):
    return sorted((bson.encode(d) for d in docs), key=lambda raw: _key(bson.decode(raw)["_id"]))


def _check_stats(stats: ReplayStats, expected: dict) -> None:
    got = stats.as_dict()
    for k, v in expected.items():
        assert got[k] == v, f"stats {k}: {got[k]!r} != {v!r} (all: {got})"


# --------------------------------------------------------------------------------------------
# every fixture case through the in-memory sink


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_fixture_case(case):
    sink = MemorySink(case["before"])
    applier = OplogApplier(None, Namespaces(), tolerant=True, sink=sink)
    for i, entry in enumerate(case["entries"]):
        applier.apply(entry)
        if str(i) in case.get("pending_after", {}):
            assert applier.pending_transactions == case["pending_after"][str(i)]
    stats = applier.close()
    after = case["after"]
    assert sorted(sink.colls) == sorted(after), "collections after the replay"
    for ns, docs in after.items():
        assert [bson.encode(d) for d in sink.docs(ns)] == _bson_docs(docs), ns
    for ns, view in case.get("views", {}).items():
        assert sink.views[ns]["viewOn"] == view["viewOn"]
    for ns in case.get("timeseries", []):
        db, coll = split_ns(ns)
        assert sink.views[ns] == {"viewOn": f"system.buckets.{coll}"}
        assert "timeseries" in sink.options[f"{db}.system.buckets.{coll}"]
    for ns, want in case.get("indexes", {}).items():
        have = sink.indexes.get(ns, {})
        assert sorted(have) == sorted(i["name"] for i in want)
        for spec in want:
            for k, v in spec.items():
                assert have[spec["name"]][k] == v, (ns, spec["name"], k)
    for ns, opts in case.get("options", {}).items():
        for k, v in opts.items():
            assert sink.options[ns][k] == v
    _check_stats(stats, case.get("stats", {}))


def test_fixture_cases_cover_the_required_shapes():
    names = {c["name"] for c in CASES}
    for needed in ("v2_diff_object_sections", "v2_diff_arrays_resize_update_nested", "legacy_v1_set_unset_and_replacement",
                   "create_capped_and_drop", "rename_same_db", "drop_database", "create_indexes_single_form",
                   "commit_index_build", "drop_indexes", "coll_mod", "apply_ops_without_session",
                   "txn_unprepared_single_entry", "txn_large_multi_entry", "txn_prepared_committed",
                   "txn_prepared_aborted", "txn_cut_off_before_commit", "noops_and_migrations", "create_view"):
        assert needed in names
    assert all(c["source"] for c in CASES)


# --------------------------------------------------------------------------------------------
# transactions: buffered, applied whole at the commit, never partly

_case = {c["name"]: c for c in CASES}


def test_multi_entry_transaction_writes_nothing_before_its_terminal_entry():
    p1, other, p2, p3 = _case["txn_large_multi_entry"]["entries"]
    sink = MemorySink({"test.c": []})
    applier = OplogApplier(None, Namespaces(), sink=sink)
    applier.apply(p1)
    assert sink.writes() == []
    applier.apply(other)
    assert sink.writes() == [("upsert", "test.c", 200)]  # the other session's write goes straight in
    applier.apply(p2)
    assert len(sink.writes()) == 1
    applier.apply(p3)
    kinds = [(w[0], w[1]) for w in sink.writes()[1:]]
    assert kinds == [("upsert", "test.c"), ("upsert", "test.c"), ("replace", "test.c"), ("upsert", "test.d"),
                     ("delete", "test.c")]  # in transaction order
    assert applier.close().transactions == 1


def test_cut_off_transaction_is_discarded_and_counted():
    c1, _ins, c2 = _case["txn_cut_off_before_commit"]["entries"]
    sink = MemorySink()
    applier = OplogApplier(None, Namespaces(), sink=sink)
    applier.apply(c1)
    applier.apply(c2)
    assert applier.pending_transactions == 1
    stats = applier.close()
    assert stats.transactions_discarded == 1 and stats.transactions == 0
    assert sink.writes() == []
    with pytest.raises(RuntimeError):
        applier.apply(c1)


def test_prepared_transaction_waits_for_commit_and_abort_discards():
    pr, _ins, cm = _case["txn_prepared_committed"]["entries"]
    sink = MemorySink({"test.c": [{"_id": 1, "x": 1}]})
    applier = OplogApplier(None, Namespaces(), sink=sink)
    applier.apply(pr)
    assert sink.writes() == [] and applier.pending_transactions == 1
    applier.apply(cm)
    assert applier.pending_transactions == 0
    assert sink.docs("test.c")[0] == {"_id": 1, "x": "prepared"}

    pa, ab = _case["txn_prepared_aborted"]["entries"]
    sink = MemorySink()
    applier = OplogApplier(None, Namespaces(), sink=sink)
    applier.apply(pa)
    applier.apply(ab)
    stats = applier.close()
    assert sink.writes() == [] and stats.transactions_aborted == 1 and stats.transactions_discarded == 0


def test_transactions_are_keyed_by_session_and_txn_number():
    p1, _other, p2, p3 = _case["txn_large_multi_entry"]["entries"]
    foreign = dict(p3, txnNumber=bson.Int64(6))  # same session, another transaction number
    applier = OplogApplier(None, Namespaces(), sink=MemorySink())
    applier.apply(p1)
    with pytest.raises(IntegrityError, match="txnNumber 6 continues an entry at ts"):
        applier.apply(foreign)
    assert applier.pending_transactions == 1


def test_commit_of_a_transaction_that_began_before_the_replay_is_refused():
    _p1, _other, p2, p3 = _case["txn_large_multi_entry"]["entries"]
    applier = OplogApplier(None, Namespaces(), sink=MemorySink())
    with pytest.raises(IntegrityError, match="began before the first replayed entry"):
        applier.apply(p2)
    _pr, _ins, cm = _case["txn_prepared_committed"]["entries"]
    with pytest.raises(IntegrityError, match="commitTransaction of session 0?[0-9a-f]+ txnNumber 3"):
        OplogApplier(None, Namespaces(), sink=MemorySink()).apply(cm)


def test_transaction_operations_on_unwanted_namespaces_are_filtered():
    p1, other, p2, p3 = _case["txn_large_multi_entry"]["entries"]
    sink = MemorySink({"test.c": []})
    applier = OplogApplier(None, Namespaces(include=["test.d"]), sink=sink)
    for e in (p1, other, p2, p3):
        applier.apply(e)
    stats = applier.close()
    assert stats.filtered == 5 and stats.transactions == 1
    assert [w[:2] for w in sink.writes()] == [("upsert", "test.d")]


# --------------------------------------------------------------------------------------------
# modes, renames, errors


def _entry(op, ns, o, o2=None, t=1):
    e = {"op": op, "ns": ns, "o": o, "ts": Timestamp(1700000000 + t, 1), "t": bson.Int64(1)}
    if o2 is not None:
        e["o2"] = o2
    return e


def test_tolerant_mode_skips_missing_documents_and_strict_mode_refuses():
    entries = [_entry("u", "t.c", {"$v": 2, "diff": {"u": {"x": 1}}}, {"_id": 1}),
               _entry("u", "t.c", {"$set": {"x": 1}}, {"_id": 1}),
               _entry("u", "t.c", {"_id": 1, "x": 2}, {"_id": 1}),
               _entry("d", "t.c", {"_id": 1})]
    applier = OplogApplier(None, Namespaces(), sink=MemorySink())
    for e in entries:
        applier.apply(e)
    assert applier.close().skipped == 4
    for e in entries:
        with pytest.raises(IntegrityError, match="matched no document on the target"):
            OplogApplier(None, Namespaces(), tolerant=False, sink=MemorySink()).apply(e)


def test_tolerant_inserts_upsert_strict_inserts_fail_on_duplicates():
    e = _entry("i", "t.c", {"_id": 1, "x": 2})
    sink = MemorySink({"t.c": [{"_id": 1, "x": 1}]})
    OplogApplier(None, Namespaces(), sink=sink).apply(e)
    assert sink.docs("t.c") == [{"_id": 1, "x": 2}]
    with pytest.raises(SourceError) as exc:
        OplogApplier(None, Namespaces(), tolerant=False, sink=MemorySink({"t.c": [{"_id": 1}]})).apply(e)
    msg = str(exc.value)
    assert "ts Timestamp(1700000001, 1) op 'i' ns 't.c'" in msg and "duplicate key" in msg
    assert "'x'" not in msg  # never the document


def test_tolerant_commands_accept_already_applied_state_strict_does_not():
    create = _entry("c", "t.$cmd", {"create": "c"})
    drop = _entry("c", "t.$cmd", {"drop": "missing"})
    sink = MemorySink({"t.c": []})
    applier = OplogApplier(None, Namespaces(), sink=sink)
    applier.apply(create)
    applier.apply(drop)
    assert applier.close().skipped == 2
    with pytest.raises(SourceError, match="create on 't' failed: Collection t.c already exists"):
        OplogApplier(None, Namespaces(), tolerant=False, sink=MemorySink({"t.c": []})).apply(create)
    with pytest.raises(SourceError, match="drop on 't' failed"):
        OplogApplier(None, Namespaces(), tolerant=False, sink=MemorySink()).apply(drop)


def test_tolerant_index_and_collmod_commands_on_missing_targets():
    entries = [_entry("c", "t.$cmd", {"dropIndexes": "c", "index": "nope_1"}),
               _entry("c", "t.$cmd", {"collMod": "missing", "validator": {}})]
    applier = OplogApplier(None, Namespaces(), sink=MemorySink({"t.c": []}))
    for e in entries:
        applier.apply(e)
    assert applier.close().skipped == 2
    for e, msg in zip(entries, ("index not found with name", "ns does not exist"), strict=True):
        with pytest.raises(SourceError, match=msg):
            OplogApplier(None, Namespaces(), tolerant=False, sink=MemorySink({"t.c": []})).apply(e)


def test_tolerant_rename_onto_an_existing_target_replaces_it():
    e = _entry("c", "t.$cmd", {"renameCollection": "t.a", "to": "t.b", "stayTemp": False, "dropTarget": False})
    sink = MemorySink({"t.a": [{"_id": 1}], "t.b": [{"_id": 2}]})
    OplogApplier(None, Namespaces(), sink=sink).apply(e)
    assert sorted(sink.colls) == ["t.b"] and sink.docs("t.b") == [{"_id": 1}]
    with pytest.raises(SourceError, match="renameCollection failed: target namespace exists"):
        OplogApplier(None, Namespaces(), tolerant=False,
                     sink=MemorySink({"t.a": [{"_id": 1}], "t.b": [{"_id": 2}]})).apply(e)


def test_renamed_namespaces_for_crud_and_commands():
    ns = Namespaces(ns_from="prod.*", ns_to="staging.*")
    sink = MemorySink()
    applier = OplogApplier(None, ns, sink=sink)
    applier.apply(_entry("c", "prod.$cmd", {"create": "a"}))
    applier.apply(_entry("i", "prod.a", {"_id": 1}))
    applier.apply(_entry("c", "prod.$cmd", {"createIndexes": "a", "v": 2, "key": {"x": 1}, "name": "x_1"}))
    applier.apply(_entry("c", "prod.$cmd", {"renameCollection": "prod.a", "to": "prod.b", "dropTarget": False}))
    applier.apply(_entry("c", "prod.$cmd", {"create": "v", "viewOn": "b", "pipeline": []}))
    applier.apply(_entry("i", "other.x", {"_id": 1}))
    assert sorted(sink.colls) == ["other.x", "staging.b"]
    assert sink.views == {"staging.v": {"viewOn": "b", "pipeline": []}}
    assert sink.indexes["staging.b"] == {"x_1": {"key": {"x": 1}, "name": "x_1"}}  # v: 2 is the default
    rename = [c for c in sink.calls if c[0] == "command" and "renameCollection" in c[2]][0]
    assert rename == ("command", "admin", {"renameCollection": "staging.a", "to": "staging.b"})
    applier.apply(_entry("c", "prod.$cmd", {"dropDatabase": 1}))
    assert sorted(sink.colls) == ["other.x"]
    assert ("command", "staging", {"dropDatabase": 1}) in sink.calls


def test_drop_database_with_a_collection_level_rename_drops_only_the_wanted_collections():
    ns = Namespaces(ns_from="a.users", ns_to="b.people")
    sink = MemorySink({"b.people": [{"_id": 1}], "b.other": [{"_id": 2}], "a.keep": [{"_id": 3}]})
    OplogApplier(None, ns, sink=sink).apply(_entry("c", "a.$cmd", {"dropDatabase": 1}))
    # a.keep is wanted and of db 'a' too (identity): dropped; b.other came from b.other: kept
    assert sorted(sink.colls) == ["b.other"]
    assert not any(c[0] == "command" and "dropDatabase" in c[2] for c in sink.calls)

    sink = MemorySink({"t.keep": [{"_id": 1}], "t.tmp": [{"_id": 2}]})
    OplogApplier(None, Namespaces(include=["t.tmp"]), sink=sink).apply(_entry("c", "t.$cmd", {"dropDatabase": 1}))
    assert sorted(sink.colls) == ["t.keep"]


def test_renames_across_the_filter_boundary():
    ns = Namespaces(include=["t.kept"])
    sink = MemorySink({"t.kept": [{"_id": 1}]})
    applier = OplogApplier(None, ns, sink=sink)
    applier.apply(_entry("c", "t.$cmd", {"renameCollection": "t.kept", "to": "t.gone", "dropTarget": False}))
    assert sink.colls == {}  # leaves the restored set: dropped
    with pytest.raises(IntegrityError, match="moves 't.tmp.agg_out', which this restore excludes, into 't.kept'"):
        applier.apply(_entry("c", "t.$cmd", {"renameCollection": "t.tmp.agg_out", "to": "t.kept", "dropTarget": True}))
    applier.apply(_entry("c", "t.$cmd", {"renameCollection": "t.x", "to": "t.y", "dropTarget": False}))
    assert applier.close().filtered == 1


def test_system_views_documents_become_view_commands():
    sink = MemorySink({"t.c": []})
    applier = OplogApplier(None, Namespaces(), tolerant=False, sink=sink)
    applier.apply(_entry("c", "t.$cmd", {"create": "v", "viewOn": "c", "pipeline": []}))
    applier.apply(_entry("i", "t.system.views", {"_id": "t.v", "viewOn": "c", "pipeline": []}))  # both may be logged
    applier.apply(_entry("u", "t.system.views", {"_id": "t.v", "viewOn": "c", "pipeline": [{"$match": {"a": 1}}]},
                         {"_id": "t.v"}))
    assert sink.views["t.v"]["pipeline"] == [{"$match": {"a": 1}}]
    applier.apply(_entry("d", "t.system.views", {"_id": "t.v"}))
    assert sink.views == {}


def test_unknown_ops_and_commands_are_integrity_errors():
    applier = OplogApplier(None, Namespaces(), sink=MemorySink())
    with pytest.raises(IntegrityError, match="unknown oplog op 'xi'"):
        applier.apply(_entry("xi", "t.c", {"_id": 1}))
    with pytest.raises(IntegrityError, match="unknown oplog command 'convertToCapped'"):
        applier.apply(_entry("c", "t.$cmd", {"convertToCapped": "c", "size": 100}))
    with pytest.raises(IntegrityError, match="commitTransaction without lsid"):
        applier.apply(_entry("c", "admin.$cmd", {"commitTransaction": 1}))
    with pytest.raises(IntegrityError, match="partialTxn/prepare"):
        applier.apply(_entry("c", "admin.$cmd", {"applyOps": [], "partialTxn": True}))


def test_bad_diff_on_an_existing_document_names_the_entry():
    sink = MemorySink({"t.c": [{"_id": 1}]})
    with pytest.raises(IntegrityError, match=r"ts Timestamp\(1700000001, 1\) op 'u' ns 't.c'.*binary diff section"):
        OplogApplier(None, Namespaces(), sink=sink).apply(_entry("u", "t.c", {"$v": 2, "diff": {"b": {"x": {}}}}, {"_id": 1}))


def test_server_failures_become_source_errors_naming_the_entry():
    class Down(MemorySink):
        def upsert(self, ns, doc):
            raise SinkError("AutoReconnect: connection refused")

    with pytest.raises(SourceError, match=r"ts Timestamp\(1700000001, 1\) op 'i' ns 't.c': insert failed: AutoReconnect"):
        OplogApplier(None, Namespaces(), sink=Down()).apply(_entry("i", "t.c", {"_id": 1, "secret": "pw"}))


def test_entry_time_ms_prefers_wall_then_ts():
    wall = dt.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    assert entry_time_ms({"wall": wall, "ts": Timestamp(1, 1)}) == int(wall.timestamp()) * 1000 + 678
    assert entry_time_ms({"wall": wall.replace(tzinfo=None)}) == int(wall.timestamp()) * 1000 + 678
    assert entry_time_ms({"ts": Timestamp(1700000000, 5)}) == 1700000000000
    raw = bson.encode({"wall": bson.DatetimeMS(2**62), "ts": Timestamp(1, 1)})
    assert entry_time_ms(bson.decode(raw, codec_options=DECODE_OPTS)) == 2**62  # out of datetime's range
    with pytest.raises(IntegrityError, match="neither 'wall' nor"):
        entry_time_ms({"op": "n"})


def test_decode_opts_keep_uuids_as_binary_and_dates_aware():
    raw = bson.encode({"u": bson.Binary(bytes(16), 4), "d": dt.datetime(2024, 1, 1, tzinfo=dt.UTC)})
    doc = bson.decode(raw, codec_options=DECODE_OPTS)
    assert type(doc) is dict and isinstance(doc["u"], bson.Binary) and doc["u"].subtype == 4
    assert doc["d"].tzinfo is not None
    assert bson.encode(doc) == raw


def test_stats_as_dict():
    stats = ReplayStats()
    stats.count("insert")
    stats.count("insert")
    d = stats.as_dict()
    assert d["applied"] == {"insert": 2} and d["transactions_discarded"] == 0 and d["noops"] == 0
