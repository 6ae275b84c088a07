"""``verify`` reads every object kind the format defines: each damage is reported, naming the key.

Repositories are built through drkit.repository APIs on the memory and local backends; the
PostgreSQL dumper's ``sources/`` object is written by its own code (``check_system_id``), which
needs no server.
"""

from __future__ import annotations

import base64
import io
import json
import os

import pytest
import yaml
from test_repository import backup, realistic, storage, wrapper  # noqa: F401 - the fixture

from drkit.dumpers.postgres import objects as pg_objects
from drkit.dumpers.postgres.wal import check_system_id
from drkit.repository import Repository, leases
from drkit.repository.format import object_aad
from drkit.repository.index import encode_index
from drkit.repository.keys import encode_envelope
from drkit.verify import verify

SYSID = "sources/db/postgres-system-id"
WAL = "000000010000000000000001"


class PgSource:
    """What verify asks of a dumper: the PostgreSQL dumper's hook, for source ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def source_objects(self, repo: Repository) -> list[tuple[str, str | None, str]]:
        return pg_objects.source_objects(repo, self.name)


def populated(storage) -> tuple[Repository, dict[str, str]]:  # noqa: F811
    """A repository holding one of every object kind; returns it (opened) and a key of each kind."""
    repo = Repository.init(storage, wrapper())
    m = backup(repo, "db", {"base.tar": realistic(700_000)})
    repo.put_log("db", WAL, io.BytesIO(os.urandom(40_000)))
    check_system_id(repo, "db", 7_300_000_000_000_000_001)
    leases.acquire(repo, "follow", "db", 3600, "the follower")
    repo = Repository.open(storage, wrapper())
    [index] = [i.key for i in storage.list("index/") if not i.key.startswith("index/log/")]
    packs = sorted(i.key for i in storage.list("data/"))
    backup_pack = "data/{0:.2}/{0}".format(m.streams[0].chunks[0][1])
    [key] = [i.key for i in storage.list("keys/")]
    return repo, {
        "config": "config", "key": key, "index": index, "pack": backup_pack,
        "log-pack": next(p for p in packs if p != backup_pack), "source-object": SYSID,
        "lease": "leases/follow/db", "manifest": f"manifests/db/{m.id}", "log": f"logs/db/{WAL}",
        "backup": f"backup db/{m.id}",
    }


def run(repo: Repository, storage=None):  # noqa: F811
    return verify(repo, dumpers={"db": PgSource("db")}, wrapper=wrapper())


def flip(storage, key: str, pos: int) -> None:  # noqa: F811
    data = bytearray(storage.get(key))
    data[pos % len(data)] ^= 0x01
    storage.put(key, bytes(data), exclusive=False)


def damage(storage, key: str, how: str) -> None:  # noqa: F811
    if how == "flip":
        flip(storage, key, len(storage.get(key)) // 2)
    elif how == "truncate":
        storage.put(key, storage.get(key)[: len(storage.get(key)) - 7], exclusive=False)
    else:
        storage.delete(key)


def problems_of(report, kind: str) -> list[dict]:
    return [p for p in report.problems if p["kind"] == kind]


def test_undamaged_repository_verifies_clean(storage):  # noqa: F811
    repo, keys = populated(storage)
    report = run(repo)
    assert report.problems == [] and report.warnings == []
    assert (report.manifests, report.log_segments, report.packs) == (1, 1, 2)
    assert report.as_dict()["ok"] and report.text().endswith(": OK")


@pytest.mark.parametrize("how", ["flip", "truncate", "delete"])
@pytest.mark.parametrize("kind", ["config", "key", "index", "source-object", "lease", "manifest", "log"])
def test_each_damaged_object_kind_is_reported(storage, kind, how):  # noqa: F811
    repo, keys = populated(storage)
    key = keys[kind]
    damage(storage, key, how)
    report = run(repo)
    if how == "delete" and kind in ("lease", "manifest", "log"):
        # Absent is a state these may be in (no job running, forgotten).
        assert problems_of(report, kind) == []
        return
    if how == "delete" and kind == "index":
        # The deleted file's name is gone with it: the pack a backup uses that no index names is
        # the problem (no restore needs the index; dedup and prune do).
        [p] = report.problems
        assert (p["kind"], p["object"], p["affects"]) == ("index", keys["pack"], [])
        assert "named by no index file" in p["error"] and p["error"].endswith(
            "affects: none: restores read pack locations from the manifests and log records")
        return
    if how == "delete" and kind == "source-object":
        # Not bound yet is a state it may be in -- but not while the source has backups.
        [p] = problems_of(report, kind)
        assert p["object"] == key and p["error"].startswith("missing, although source 'db' has backups")
        assert p["affects"] == [] and p["error"].endswith("affects future backups and WAL archiving only")
        return
    found = problems_of(report, kind)
    assert found, f"{how} of {key} not reported: {report.problems}"
    assert found[0]["object"] == (key if not (kind == "key" and how == "delete") else "keys/")
    assert not report.as_dict()["ok"] and key.split("/")[0] in report.text()
    assert isinstance(found[0]["affects"], list)
    if kind == "source-object":
        assert found[0]["affects"] == []
        assert found[0]["error"].endswith("affects: none: affects future backups and WAL archiving only")
    if kind == "lease":
        assert found[0]["affects"] == []
        assert found[0]["error"].endswith("affects: none: treated as stale by the next job")
    if kind == "manifest":
        assert found[0]["affects"] == [key]
    if kind == "log":
        assert found[0]["affects"] == [f"log db/{WAL}"]
    if kind == "config":
        assert found[0]["affects"] and "all restore points" in found[0]["affects"][0]


def test_flipped_byte_inside_the_wrapped_master_key_is_reported(storage):  # noqa: F811
    # The envelope still parses: its self-checksum finds the damage, and for an envelope written
    # before self-checks (no "check" field) unwrapping it again does.
    repo, keys = populated(storage)
    env = json.loads(storage.get(keys["key"]))
    wrapped = bytearray(base64.b64decode(env["wrapped"]))
    wrapped[7] ^= 0x01
    storage.put(keys["key"], json.dumps({**env, "wrapped": base64.b64encode(wrapped).decode()}).encode(),
                exclusive=False)
    [p] = problems_of(run(repo), "key")
    assert p["object"] == keys["key"] and "self-check mismatch" in p["error"] and p["affects"]
    old = {k: v for k, v in env.items() if k != "check"}
    storage.put(keys["key"], json.dumps({**old, "wrapped": base64.b64encode(wrapped).decode()}).encode(),
                exclusive=False)
    [p] = problems_of(run(repo), "key")
    assert p["object"] == keys["key"] and "does not unwrap" in p["error"] and p["affects"]


def test_damaged_second_envelope_affects_no_restore(storage):  # noqa: F811
    repo, keys = populated(storage)
    extra = wrapper("another secret, another envelope").wrap(os.urandom(32), repo.id, "feedface")
    storage.put("keys/feedface", encode_envelope({**extra, "nonce": "AAAA"}))
    [p] = problems_of(run(repo), "key")
    assert p["object"] == "keys/feedface" and "'nonce'" in p["error"] and p["affects"] == []
    assert "affects: none while the configured key opens the repository" in p["error"]


@pytest.mark.parametrize("where", ["magic", "header", "trailer-low", "trailer-high", "truncate"])
def test_damaged_pack_header_or_trailer_is_reported(storage, where):  # noqa: F811
    repo, keys = populated(storage)
    key = keys["pack"]
    size = len(storage.get(key))
    if where == "truncate":
        storage.put(key, storage.get(key)[:-3], exclusive=False)
    else:
        flip(storage, key, {"magic": 1, "header": size - 30, "trailer-low": size - 4, "trailer-high": size - 1}[where])
    report = run(repo)
    [p] = problems_of(report, "pack")
    assert p["object"] == key
    assert {"magic": "bad magic", "header": "sealed header", "trailer-low": "header", "trailer-high": "trailer",
            "truncate": "header"}[where] in p["error"]
    # The blobs are still read at the manifest's locations: no restore is lost to a damaged header.
    assert p["affects"] == [] and problems_of(report, "chunk") == []


def test_missing_pack_is_reported_with_what_it_breaks(storage):  # noqa: F811
    repo, keys = populated(storage)
    storage.delete(keys["pack"])
    report = run(repo)
    [p] = problems_of(report, "pack")
    assert p["object"] == keys["pack"] and "missing" in p["error"] and p["affects"] == [keys["backup"]]
    assert {c["object"] for c in problems_of(report, "chunk")} == {keys["pack"]}


def test_flipped_chunk_is_reported_as_a_chunk(storage):  # noqa: F811
    repo, keys = populated(storage)
    flip(storage, keys["pack"], 100)
    [p] = run(repo).problems
    assert (p["kind"], p["object"], p["affects"]) == ("chunk", keys["pack"], [keys["backup"]])


def test_index_that_disagrees_with_the_pack_header_is_reported(storage):  # noqa: F811
    repo, keys = populated(storage)
    pack_id = keys["pack"].rsplit("/", 1)[1]
    name = "index/" + "ab" * 16
    doc = encode_index({pack_id: [("cd" * 32, 5, 10, 10)]})
    storage.put(name, repo.keys.seal(repo.compress_meta(doc), object_aad("index", name)))
    [p] = problems_of(run(repo), "pack")
    assert p["object"] == keys["pack"] and name in p["error"] and "not in the pack's header" in p["error"]


def test_unknown_sources_object_is_a_warning(storage):  # noqa: F811
    repo, keys = populated(storage)
    storage.put("sources/gone/some-state", b"x")
    report = run(repo)
    assert report.problems == []
    assert [w["object"] for w in report.warnings] == ["sources/gone/some-state"]
    assert "unknown object" in report.warnings[0]["warning"] and "warning: sources/gone" in report.text()
    # Without the source's dumper, its own object is unknown too.
    assert {w["object"] for w in verify(repo).warnings} == {"sources/gone/some-state", SYSID}


def test_unbound_source_object_absent_before_any_backup_is_no_problem(storage):  # noqa: F811
    repo = Repository.init(storage, wrapper())
    backup(repo, "other", {"x": b"y" * 1000})
    assert problems_of(verify(repo, dumpers={"db": PgSource("db")}, wrapper=wrapper()), "source-object") == []


def test_repository_that_lost_its_config_is_damaged_not_absent(storage):  # noqa: F811
    from drkit.errors import RepositoryError, RepositoryExists, RepositoryNotFound

    with pytest.raises(RepositoryNotFound, match="drkit init"):
        Repository.open(storage, wrapper())
    repo, keys = populated(storage)
    storage.delete("config")
    with pytest.raises(RepositoryError) as exc:
        Repository.open(storage, wrapper())
    assert not isinstance(exc.value, RepositoryNotFound) and exc.value.exit_code == 3
    assert "lost its config object" in str(exc.value) and "Do not run 'drkit init'" in str(exc.value)
    before = sorted(i.key for i in storage.list(""))
    with pytest.raises(RepositoryExists, match="lost its config object"):
        Repository.init(storage, wrapper())
    assert sorted(i.key for i in storage.list("")) == before  # init wrote nothing


def test_configuration_error_is_not_an_integrity_failure(tmp_path):
    from drkit.cli.main import main

    key = tmp_path / "master.key"
    key.write_bytes(os.urandom(32).hex().encode())
    cfg = tmp_path / "drkit.yaml"
    base = {"repository": {"url": f"file://{tmp_path / 'repo'}"}, "encryption": {"key_file": str(key)}}
    cfg.write_text(yaml.safe_dump(base))
    main(["--config", str(cfg), "init"])
    cfg.write_text(yaml.safe_dump({**base, "sources": {"x": {"type": "no-such-datastore"}}}))
    with pytest.raises(SystemExit) as done:
        main(["--config", str(cfg), "verify"])
    assert done.value.code == 2


def test_part_records_are_verified(storage):  # noqa: F811
    repo = Repository.init(storage, wrapper())
    with repo.begin_backup("cluster", "test", "full") as txn:
        for name in ("n1", "n2"):
            part = txn.part(name, host=f"{name}.example")
            part.write_stream("s.tar", io.BytesIO(realistic(50_000)))
            part.finish()
        bid = txn.commit().id
    assert run(repo).problems == []
    flip(storage, f"parts/cluster/{bid}/n2", 20)
    [p] = run(repo).problems
    assert (p["kind"], p["object"], p["affects"]) == ("part", f"parts/cluster/{bid}/n2", [])
    assert "affects: none" in p["error"]
    # A part of a backup never committed is only a warning.
    txn = repo.begin_backup("cluster", "test", "full")
    part = txn.part("n1", host="h")
    part.write_stream("s.tar", io.BytesIO(b"x" * 1000))
    part.finish()
    report = run(repo)
    assert [w["object"] for w in report.warnings if w["kind"] == "part"] == [f"parts/cluster/{txn.id}/n1"]
