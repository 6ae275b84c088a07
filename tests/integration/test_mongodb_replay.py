"""The MongoDB oplog replay against the real test server (FerretDB with an oplog, or a mongod).

1. Every case of tests/fixtures/mongodb/oplog_real_format.json (real MongoDB's entry formats):
   ``before`` is loaded into fresh databases (``--ns-from '*.*' --ns-to 'replaytest_<id>_*.*'``,
   so the rename path is exercised too), the entries are applied with :class:`OplogApplier`, and
   every collection is compared, document by document as BSON bytes (types and field order), with
   ``after``.  A case marked ``ferretdb_error`` uses something FerretDB does not implement: on
   FerretDB the replay must fail with a SourceError naming the entry and the server's message;
   on a real mongod the case runs in full.
2. Real oplog entries written by the server itself for a workload are replayed into a second
   database through ``--ns-from``/``--ns-to``-style Namespaces, and the two databases compared.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import bson
import pytest
from bson.json_util import CANONICAL_JSON_OPTIONS, loads
from bson.timestamp import Timestamp
from mongo_fixtures import fixture_mongodb_server  # noqa: F401  (also imported by conftest.py)

from drkit.dumpers.mongodb.namespaces import Namespaces, split_ns
from drkit.dumpers.mongodb.replay import DECODE_OPTS, OplogApplier
from drkit.errors import SourceError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mongodb" / "oplog_real_format.json"
CASES = loads(FIXTURES.read_text(), json_options=CANONICAL_JSON_OPTIONS)


def _key(_id: Any) -> bytes:
    return bson.encode({"k": _id})


def _raw_docs(docs: list[dict]) -> list[bytes]:
    return [bson.encode(d) for d in sorted(docs, key=lambda d: _key(d["_id"]))]


@pytest.fixture(name="client")
def fixture_client(mongodb_server):
    client = mongodb_server.client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(name="prefix")
def fixture_prefix(client):
    prefix = f"replaytest_{uuid.uuid4().hex[:10]}_"
    yield prefix
    for name in client.list_database_names():
        if name.startswith(prefix):
            client.drop_database(name)


def _is_ferretdb(client) -> bool:
    return "ferretdbVersion" in client.admin.command("buildInfo")


def _collections(client, prefix: str) -> dict[str, dict]:
    """target ns -> its listCollections info, for every database of this test."""
    out = {}
    for db in client.list_database_names():
        if db.startswith(prefix):
            for info in client[db].list_collections():
                name = info["name"]
                if name.startswith("system.") and not name.startswith("system.buckets."):
                    continue
                out[f"{db}.{name}"] = info
    return out


def _docs(client, ns: str) -> list[bytes]:
    db, coll = split_ns(ns)
    docs = list(client.get_database(db, codec_options=DECODE_OPTS)[coll].find())
    return _raw_docs(docs)


def _load(client, namespaces: Namespaces, before: dict[str, list[dict]]) -> None:
    for ns, docs in before.items():
        db, coll = split_ns(namespaces.target(ns))
        if docs:
            client[db][coll].insert_many([dict(d) for d in docs])
        else:
            client[db].create_collection(coll)


@pytest.mark.integration
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_fixture_case_on_the_server(case, client, prefix):
    namespaces = Namespaces(ns_from="*.*", ns_to=f"{prefix}*.*")
    _load(client, namespaces, case["before"])
    applier = OplogApplier(client, namespaces, tolerant=True)

    if case.get("ferretdb_error") and _is_ferretdb(client):
        with pytest.raises(SourceError) as exc:
            for entry in case["entries"]:
                applier.apply(entry)
        msg = str(exc.value)
        assert case["ferretdb_error"] in msg, msg
        assert "replaying oplog entry ts Timestamp(" in msg and " op 'c' " in msg, msg
        return

    for entry in case["entries"]:
        applier.apply(entry)
    stats = applier.close().as_dict()
    for k, v in case.get("stats", {}).items():
        assert stats[k] == v, (k, stats)

    colls = _collections(client, prefix)
    expected = {namespaces.target(ns) for ns in case["after"]}
    views = {namespaces.target(ns) for ns in case.get("views", {})}
    for ns in case.get("timeseries", []):  # a real mongod: the time-series collection, over its buckets
        target = namespaces.target(ns)
        assert colls[target]["type"] == "timeseries", colls.get(target)
        db, coll = split_ns(target)
        buckets = f"{db}.system.buckets.{coll}"
        expected.discard(buckets)
        colls.pop(buckets, None)  # listed by some server versions, not by others
        colls.pop(target)
    assert {ns for ns, info in colls.items() if info.get("type") != "view"} == expected
    assert {ns for ns, info in colls.items() if info.get("type") == "view"} == views
    for ns, docs in case["after"].items():
        if namespaces.target(ns) in expected:
            assert _docs(client, namespaces.target(ns)) == _raw_docs(docs), ns
    for ns, view in case.get("views", {}).items():
        assert colls[namespaces.target(ns)]["options"]["viewOn"] == view["viewOn"]
    for ns, want in case.get("indexes", {}).items():
        db, coll = split_ns(namespaces.target(ns))
        have = {i["name"]: i for i in client[db][coll].list_indexes() if i["name"] != "_id_"}
        assert sorted(have) == sorted(i["name"] for i in want), ns
        for spec in want:
            got = have[spec["name"]]
            assert list(got["key"].items()) == list(spec["key"].items())
            for k, v in spec.items():
                if k != "key":
                    assert got.get(k) == v, (spec["name"], k)
    for ns, opts in case.get("options", {}).items():
        info = colls[namespaces.target(ns)]
        for k, v in opts.items():
            assert info["options"].get(k) == v, (ns, k, info["options"])


def _last_ts(client) -> Timestamp:
    last = list(client.local["oplog.rs"].find({}, {"ts": 1}).sort("$natural", -1).limit(1))
    return last[0]["ts"] if last else Timestamp(0, 0)


@pytest.mark.integration
def test_real_oplog_entries_replay_into_a_renamed_database(client, prefix):
    src, dst = f"{prefix}src", f"{prefix}dst"
    start = _last_ts(client)
    db = client[src]
    when = dt.datetime(2024, 2, 3, 4, 5, 6, 789000, tzinfo=dt.UTC)
    db.people.insert_many([
        {"_id": i, "name": f"p{i}", "age": 20 + i, "big": bson.Int64(i) << 40, "score": i / 3, "when": when,
         "tags": ["a", f"t{i}"], "addr": {"city": "X", "zip": str(1000 + i)},
         "blob": bson.Binary(bytes([i]) * 4, 0), "uid": bson.Binary(uuid.UUID(int=i).bytes, 4)}
        for i in range(20)
    ])
    db.orders.insert_one({"_id": bson.ObjectId(), "total": 10.5, "lines": [{"sku": "a", "n": 1}]})
    db.people.update_one({"_id": 3}, {"$set": {"name": "three", "addr.city": "Y"}})
    db.people.update_one({"_id": 4}, {"$inc": {"age": 5}, "$push": {"tags": "vip"}})
    db.people.update_many({"age": {"$gte": 35}}, {"$set": {"senior": True}})
    db.people.replace_one({"_id": 5}, {"_id": 5, "name": "five", "age": 25, "big": bson.Int64(5), "score": 0.5,
                                       "when": when, "tags": [], "addr": {"city": "Z", "zip": "0"},
                                       "blob": b"", "uid": bson.Binary(uuid.UUID(int=5).bytes, 4), "new": 1})
    db.people.delete_one({"_id": 6})
    db.people.delete_many({"_id": {"$in": [7, 8]}})
    db.people.insert_one({"_id": 6, "name": "again"})
    db.people.update_one({"_id": 100}, {"$set": {"name": "upserted"}}, upsert=True)

    oplog = client.local.get_collection("oplog.rs", codec_options=DECODE_OPTS)
    entries = list(oplog.find({"ts": {"$gt": start}, "ns": {"$regex": f"^{src}\\."}}).sort("ts", 1))
    ops = [e["op"] for e in entries]
    assert ops.count("i") >= 23 and ops.count("u") >= 1 and ops.count("d") == 3, ops

    namespaces = Namespaces(include=[src], ns_from=f"{src}.*", ns_to=f"{dst}.*")
    applier = OplogApplier(client, namespaces, tolerant=False)
    for entry in entries:
        applier.apply(entry)
    stats = applier.close()
    assert stats.applied.get("delete") == 3 and stats.filtered == 0 and stats.transactions_discarded == 0

    for coll in ("people", "orders"):
        want = _docs(client, f"{src}.{coll}")
        assert len(want) > 0
        assert _docs(client, f"{dst}.{coll}") == want, coll
    assert sorted(client[dst].list_collection_names()) == ["orders", "people"]
