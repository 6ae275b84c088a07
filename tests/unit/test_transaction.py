"""The core backup transaction (parts, part records, commit, abort) and manifest format version 2,
on the memory and local backends; and a repository written by the code before version 2."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from drkit.config import Secret
from drkit.errors import DrkitError, LockedError, RepositoryError, UnsupportedFormat
from drkit.repository import Manifest, Repository, leases
from drkit.repository import format as fmt
from drkit.repository.keys import SecretWrapper
from drkit.repository.manifest import PartRef, StreamRef
from drkit.repository.transaction import IncompleteBackup
from drkit.storage.local import LocalStorage
from drkit.storage.memory import MemoryStorage

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
SECRET = "correct horse battery staple"
#: The commit before the backup transaction and format version 2 (the fixture repository's writer).
BEFORE_V2 = "7991a3ed9c1207370a86026ff78bf20b51a1f6a2"


def wrapper() -> SecretWrapper:
    return SecretWrapper(Secret(SECRET), "test key", "key_env")


def data(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture(params=["memory", "local"])
def storage(request, tmp_path):
    if request.param == "memory":
        name = os.urandom(4).hex()
        yield MemoryStorage(name)
        MemoryStorage.reset(name)
    else:
        (tmp_path / "repo").mkdir()
        yield LocalStorage(tmp_path / "repo")


def keys(storage, prefix: str) -> list[str]:
    return sorted(i.key for i in storage.list(prefix))


def read(repo: Repository, ref: StreamRef) -> bytes:
    with repo.open_stream(ref) as fh:
        return fh.read()


# -- single part, multi part -----------------------------------------------------------------

def test_single_part_backup_commits_a_v2_manifest(storage):
    repo = Repository.init(storage, wrapper())
    assert repo.format_version == 2
    a, b = data(700_000, 1), data(5_000, 2)
    with repo.begin_backup("db", "test", "full", host="db1.example") as txn:
        txn.write_stream("a.bin", io.BytesIO(a), meta={"k": 1})
        txn.write_stream("b.bin", io.BytesIO(b))
        assert keys(storage, fmt.MANIFEST_PREFIX) == []  # nothing visible before the commit
        m = txn.commit(metadata={"x": "y"}, provides=["backup", "range"])
    assert txn.state == "committed"
    again = Repository.open(storage, wrapper())
    [loaded] = again.list_manifests("db")
    assert loaded.id == txn.id == m.id and loaded.id[:8].isdigit()
    assert (loaded.format_version, loaded.parts, loaded.parent, loaded.partial) == (2, [], None, False)
    assert loaded.provides == ["backup", "range"]
    assert (loaded.host, loaded.metadata, loaded.datastore, loaded.type) == ("db1.example", {"x": "y"}, "test", "full")
    assert loaded.started <= loaded.finished
    assert loaded.stored_bytes > len(a) // 2
    assert [s.name for s in loaded.streams] == ["a.bin", "b.bin"]
    assert loaded.stream("a.bin").meta == {"k": 1}
    assert read(again, loaded.stream("a.bin")) == a and read(again, loaded.stream("b.bin")) == b
    assert keys(storage, fmt.PART_PREFIX) == []


def test_multi_part_backup_names_its_parts_and_flattens_their_streams(storage):
    repo = Repository.init(storage, wrapper())
    blobs = {f"n{i}": data(300_000 + i, 10 + i) for i in range(3)}
    with repo.begin_backup("cluster", "test", "full") as txn:
        for name, body in blobs.items():
            part = txn.part(name, host=f"{name}.example")
            part.write_stream("sstables.tar", io.BytesIO(body), meta={"node": name})
            record = part.finish(metadata={"tokens": name})
            assert record.key == f"parts/cluster/{txn.id}/{name}"
        txn.write_stream("schema.cql", io.BytesIO(b"CREATE KEYSPACE k"))
        m = txn.commit(metadata={"nodes": 3})
    assert keys(storage, f"parts/cluster/{m.id}/") == [f"parts/cluster/{m.id}/{n}" for n in blobs]
    [loaded] = Repository.open(storage, wrapper()).list_manifests("cluster")
    assert [(p.name, p.host, p.status, p.streams, p.metadata) for p in loaded.parts] == [
        (n, f"{n}.example", "ok", ["sstables.tar"], {"tokens": n}) for n in blobs]
    assert not loaded.partial and loaded.failed_parts == []
    assert [(s.name, s.meta.get("part")) for s in loaded.streams] == [
        ("schema.cql", None), *[("sstables.tar", n) for n in blobs]]
    for s in loaded.streams[1:]:
        assert read(repo, s) == blobs[s.meta["part"]]
    assert loaded.stored_bytes >= sum(len(b) for b in blobs.values())
    assert loaded.summary()["parts"] == [{"name": n, "host": f"{n}.example", "status": "ok"} for n in blobs]


def test_removing_a_manifest_removes_its_part_records_and_nothing_else(storage):
    repo = Repository.init(storage, wrapper())
    ids = []
    for _ in range(2):
        with repo.begin_backup("cluster", "test", "full") as txn:
            for name in ("n1", "n2"):
                part = txn.part(name, host=f"{name}.example")
                part.write_stream("s.tar", io.BytesIO(data(1000, 3)))
                part.finish()
            ids.append(txn.commit().id)
    assert repo.delete_manifests("cluster", [ids[0]]) == []
    assert keys(storage, f"parts/cluster/{ids[0]}/") == []
    assert keys(storage, f"parts/cluster/{ids[1]}/") == [f"parts/cluster/{ids[1]}/{n}" for n in ("n1", "n2")]
    assert [m.id for m in repo.list_manifests("cluster")] == [ids[1]]


def test_a_failed_part_commits_nothing_and_abort_removes_own_records(storage):
    repo = Repository.init(storage, wrapper())
    with pytest.raises(IncompleteBackup, match=r"n2 on h2 failed: disk full"):
        with repo.begin_backup("cluster", "test", "full") as txn:
            ok = txn.part("n1", host="h1")
            ok.write_stream("x", io.BytesIO(data(200_000, 3)))
            ok.finish()
            bad = txn.part("n2", host="h2")
            bad.write_stream("x", io.BytesIO(data(200_000, 4)))
            bad.fail("disk full")
            assert len(keys(storage, fmt.PART_PREFIX)) == 2
            txn.commit()
    assert txn.state == "aborted"
    assert keys(storage, fmt.MANIFEST_PREFIX) == []
    assert keys(storage, fmt.PART_PREFIX) == []  # this process's records, deleted on abort
    assert keys(storage, fmt.DATA_PREFIX) != []  # packs stay for prune
    assert Repository.open(storage, wrapper()).list_manifests() == []


def test_partial_ok_commits_a_visibly_partial_manifest(storage):
    repo = Repository.init(storage, wrapper())
    body = data(100_000, 5)
    with repo.begin_backup("rs", "test", "full") as txn:
        p = txn.part("member-a")
        p.write_stream("dump", io.BytesIO(body))
        p.finish()
        txn.part("member-b").fail("connection refused")
        m = txn.commit(partial_ok=True, expected_parts=["member-a", "member-b", "member-c"])
    [loaded] = Repository.open(storage, wrapper()).list_manifests("rs")
    assert loaded.partial is True and m.partial is True
    assert loaded.failed_parts == ["member-b", "member-c"]
    by = {p.name: p for p in loaded.parts}
    assert (by["member-b"].status, by["member-b"].reason, by["member-b"].streams) == ("failed", "connection refused", [])
    assert (by["member-c"].status, by["member-c"].reason) == ("missing", "no part record")
    assert [s.meta["part"] for s in loaded.streams] == ["member-a"]
    assert read(repo, loaded.streams[0]) == body
    assert loaded.summary()["failed_parts"] == ["member-b", "member-c"]


def test_missing_or_unfinished_parts_are_refused(storage):
    repo = Repository.init(storage, wrapper())
    txn = repo.begin_backup("c", "test", "full")
    txn.part("n1").finish()
    with pytest.raises(IncompleteBackup, match="n2 has no part record"):
        txn.commit(expected_parts=["n1", "n2"])
    txn.part("n3")
    with pytest.raises(IncompleteBackup, match="n3 neither finished nor failed"):
        txn.commit()
    with pytest.raises(DrkitError, match="already has a part n1"):
        txn.part("n1")
    with pytest.raises(DrkitError, match="invalid part name"):
        txn.part("../x")
    txn.abort()
    assert keys(storage, fmt.MANIFEST_PREFIX) == [] and keys(storage, fmt.PART_PREFIX) == []
    with pytest.raises(DrkitError, match="already aborted"):
        txn.commit()


def test_every_part_failing_is_not_committed_even_when_partial_is_allowed(storage):
    repo = Repository.init(storage, wrapper())
    txn = repo.begin_backup("c", "test", "full")
    txn.part("n1").fail("boom")
    with pytest.raises(IncompleteBackup, match="every part failed"):
        txn.commit(partial_ok=True)
    assert keys(storage, fmt.MANIFEST_PREFIX) == []


def test_parts_from_separate_processes_are_committed_by_the_coordinator(storage):
    """Three Repository objects on one storage: two 'hosts' write a part each, a third commits."""
    coordinator = Repository.init(storage, wrapper())
    txn = coordinator.begin_backup("cluster", "test", "full")
    bodies = {"n1": data(400_000, 21), "n2": data(400_000, 22)}
    for name, body in bodies.items():
        host_repo = Repository.open(storage, wrapper())
        with host_repo.join_backup("cluster", txn.id) as joined:
            part = joined.part(name, host=f"{name}.example")
            part.write_stream("data", io.BytesIO(body))
            part.finish()
            with pytest.raises(DrkitError, match="the process that began it commits it"):
                joined.commit()
    assert keys(storage, fmt.MANIFEST_PREFIX) == []
    m = txn.commit(expected_parts=["n1", "n2"])
    assert [p.name for p in m.parts] == ["n1", "n2"] and not m.partial
    reader = Repository.open(storage, wrapper())
    [loaded] = reader.list_manifests("cluster")
    for s in loaded.streams:
        assert read(reader, s) == bodies[s.meta["part"]]
    with pytest.raises(DrkitError, match="already committed"):
        reader.join_backup("cluster", txn.id)
    with pytest.raises(DrkitError, match="not a backup id"):
        reader.join_backup("cluster", "nonsense")


def test_a_joined_process_that_fails_deletes_only_its_own_part_records(storage):
    repo = Repository.init(storage, wrapper())
    txn = repo.begin_backup("cluster", "test", "full")
    txn.part("n1").finish()
    other = Repository.open(storage, wrapper())
    with pytest.raises(RuntimeError):
        with other.join_backup("cluster", txn.id) as joined:
            joined.part("n2").finish()
            raise RuntimeError("killed")
    assert keys(storage, fmt.PART_PREFIX) == [f"parts/cluster/{txn.id}/n1"]
    with pytest.raises(IncompleteBackup, match="n2 has no part record"):
        txn.commit(expected_parts=["n1", "n2"])


def test_abandoned_transaction_leaves_no_manifest(storage):
    repo = Repository.init(storage, wrapper())
    with pytest.raises(ValueError):
        with repo.begin_backup("db", "test", "full") as txn:
            txn.write_stream("a", io.BytesIO(data(300_000, 7)))
            raise ValueError("dumper failed")
    with repo.begin_backup("db", "test", "full") as txn2:
        txn2.write_stream("a", io.BytesIO(b"x"))
        # the block ends without a commit: abandoned too
    assert (txn.state, txn2.state) == ("aborted", "aborted")
    assert keys(storage, fmt.MANIFEST_PREFIX) == []
    assert Repository.open(storage, wrapper()).list_manifests() == []


def test_a_killed_backup_at_the_commit_step_leaves_no_manifest(tmp_path):
    """SIGKILL at the named crash point just before the manifest write (a real process)."""
    (tmp_path / "repo").mkdir()
    Repository.init(LocalStorage(tmp_path / "repo"), wrapper())
    script = textwrap.dedent(f"""
        import io
        from drkit.config import Secret
        from drkit.repository import Repository
        from drkit.repository.keys import SecretWrapper
        from drkit.storage.local import LocalStorage
        repo = Repository.open(LocalStorage({str(tmp_path / "repo")!r}), SecretWrapper(Secret({SECRET!r}), "k", "key_env"))
        with repo.begin_backup("db", "test", "full") as txn:
            p = txn.part("n1")
            p.write_stream("a", io.BytesIO(b"abc" * 1000))
            p.finish()
            txn.commit()
        print("committed")
    """)
    proc = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "DRKIT_CRASH_AT": "backup.before_commit"}, timeout=120)
    assert proc.returncode == -9, proc.stderr
    storage = LocalStorage(tmp_path / "repo")
    assert keys(storage, fmt.MANIFEST_PREFIX) == []
    assert len(keys(storage, fmt.PART_PREFIX)) == 1  # a killed process cannot clean up; nothing reads it
    assert Repository.open(storage, wrapper()).list_manifests() == []


# -- format versions -------------------------------------------------------------------------

def test_manifest_v2_and_v1_round_trip():
    ref = StreamRef("s", 3, "d" * 64, [["c" * 64, "p" * 32, 4, 10, 3]], {"part": "n1"})
    m = Manifest("20261207T000000Z-abcdef", "src", "test", "incremental", "2026-12-07T00:00:00Z",
                 "2026-12-07T00:00:01Z", [ref], {"chain": "c1"}, parts=[PartRef("n1", "h", streams=["s"])],
                 parent="20261206T000000Z-012345", provides=["range"])
    back = Manifest.from_json(m.to_json())
    assert back == m
    doc = json.loads(m.to_json())
    assert doc["format_version"] == 2 and doc["parent"] == "20261206T000000Z-012345" and doc["parts"][0]["name"] == "n1"

    v1 = Manifest("20261207T000000Z-abcdef", "src", "redis", "incremental", "a", "b", [ref],
                  {"parent": "20261206T000000Z-012345"}, format_version=1)
    doc = json.loads(v1.to_json())
    assert not {"parts", "parent", "provides", "partial"} & set(doc)
    back = Manifest.from_json(v1.to_json())
    assert (back.format_version, back.parts, back.parent, back.provides) == (1, [], "20261206T000000Z-012345", [])
    # a version-1 manifest with no recorded parent, and one with parts (which version 1 cannot hold)
    assert Manifest.from_json(Manifest("i", "s", "t", "full", "a", "b", [], format_version=1).to_json()).parent is None
    with pytest.raises(ValueError, match="version-1 manifest cannot hold parts"):
        Manifest("i", "s", "t", "full", "a", "b", [], parts=[PartRef("n")], format_version=1).to_json()


def test_a_version_1_repository_stays_version_1(storage):
    repo = Repository.init(storage, wrapper(), version=1)
    with repo.begin_backup("db", "redis", "incremental", parent="20261206T000000Z-012345") as txn:
        txn.write_stream("a", io.BytesIO(b"hello"))
        with pytest.raises(RepositoryError, match="format version 1.*drkit repository upgrade"):
            txn.part("n1")
        m = txn.commit(metadata={"parent": "20261206T000000Z-012345"})
    assert m.format_version == 1
    reopened = Repository.open(storage, wrapper())
    assert reopened.format_version == 1
    [key] = keys(storage, fmt.MANIFEST_PREFIX)
    raw = json.loads(reopened._open_json("manifest", key, storage.get(key)))
    assert raw["format_version"] == 1 and "parts" not in raw and "parent" not in raw
    [loaded] = reopened.list_manifests("db")
    assert loaded.parent == "20261206T000000Z-012345" and read(reopened, loaded.streams[0]) == b"hello"


def test_upgrade_to_version_2(storage):
    from drkit.cli.upgrade import upgrade_repository

    repo = Repository.init(storage, wrapper(), version=1)
    lease = leases.acquire(repo, "follow", "cache", 60, "redis follow of cache")
    with pytest.raises(LockedError, match=r"leases/follow/cache held by .* may be a drkit that only knows version 1"):
        upgrade_repository(repo)
    assert Repository.open(storage, wrapper()).format_version == 1
    leases.release(repo, lease)
    leases.acquire(repo, "read", "restore-1", 60, "a restore")  # readers do not block the upgrade
    assert upgrade_repository(repo) == {"repository": storage.url, "from": 1, "to": 2, "changed": True}
    again = Repository.open(storage, wrapper())  # the MAC of the rewritten config checks
    assert again.format_version == 2 and again.config["upgraded"]["from"] == 1
    assert upgrade_repository(again)["changed"] is False
    with again.begin_backup("c", "test", "full") as txn:
        txn.part("n1").finish()
        assert txn.commit().format_version == 2


def test_an_unknown_version_is_refused_with_exit_3(tmp_path):
    (tmp_path / "repo").mkdir()
    storage = LocalStorage(tmp_path / "repo")
    Repository.init(storage, wrapper())
    doc = json.loads(storage.get(fmt.CONFIG_KEY))
    doc["config"]["version"] = 3
    storage.put(fmt.CONFIG_KEY, json.dumps(doc).encode(), exclusive=False)
    with pytest.raises(UnsupportedFormat, match=r"format version 3 is not supported by this drkit \(supports 1, 2\)"):
        Repository.open(storage, wrapper())
    config = tmp_path / "drkit.yaml"
    config.write_text(f"repository: {{url: 'file://{tmp_path / 'repo'}'}}\nencryption: {{key_env: TXN_KEY}}\nsources: {{}}\n")
    proc = subprocess.run([PYTHON, "-m", "drkit.cli.main", "--config", str(config), "list"], capture_output=True,
                          text=True, env={**os.environ, "TXN_KEY": SECRET}, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "format version 3 is not supported" in proc.stderr


# -- a repository written by the code before version 2 -----------------------------------------

OLD_WRITER = textwrap.dedent("""
    import io, json, random, sys
    from pathlib import Path
    import drkit
    assert drkit.__file__.startswith(sys.argv[1]), drkit.__file__
    from drkit.config import Secret
    from drkit.errors import DrkitError
    from drkit.repository import Manifest, Repository
    from drkit.repository.keys import SecretWrapper
    from drkit.repository.manifest import iso, new_backup_id, utcnow
    from drkit.storage.local import LocalStorage

    mode, root, secret = sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    storage, wrapper = LocalStorage(root), SecretWrapper(Secret(secret), "test key", "key_env")
    if mode == "make":
        repo = Repository.init(storage, wrapper)
        out = []
        for i, (kind, parent) in enumerate([("full", None), ("incremental", 0)]):
            session = repo.session()
            refs = [session.write_stream(f"s{j}", io.BytesIO(random.Random(10 * i + j).randbytes(150_000 * (j + 1))))
                    for j in range(2)]
            stored = session.finish()
            now = iso(utcnow())
            meta = {"chain": "c1"} if parent is None else {"chain": "c1", "parent": out[parent]}
            m = Manifest(new_backup_id(), "src", "test", kind, now, now, refs, meta, stored_bytes=stored)
            repo.commit_manifest(m)
            out.append(m.id)
        repo.put_log("src", "000000010000000000000001", io.BytesIO(random.Random(99).randbytes(80_000)), {"n": 1})
        print(json.dumps(out))
    else:
        try:
            repo = Repository.open(storage, wrapper)
        except DrkitError as exc:
            print(json.dumps({"error": type(exc).__name__, "message": str(exc), "exit": exc.exit_code}))
        else:
            print(json.dumps({"manifests": [[m.id, m.format_version, m.type] for m in repo.list_manifests()]}))
""")


@pytest.fixture(scope="module")
def old_tree(tmp_path_factory) -> Path:
    tree = tmp_path_factory.mktemp("before-v2")
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", BEFORE_V2, "drkit"], capture_output=True,
                             check=True, timeout=120).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True, timeout=120)
    return tree


def run_old(tree: Path, *args: str) -> dict | list:
    proc = subprocess.run([PYTHON, "-c", OLD_WRITER, str(tree), *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_repository_written_before_version_2_is_listed_read_and_restored(old_tree, tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    full_id, inc_id = run_old(old_tree, "make", str(root), SECRET)
    storage = LocalStorage(root)
    repo = Repository.open(storage, wrapper())
    assert repo.format_version == 1
    assert repo.list_sources() == ["src"]
    by_id = {m.id: m for m in repo.list_manifests("src")}
    assert set(by_id) == {full_id, inc_id}
    full, inc = by_id[full_id], by_id[inc_id]
    assert (full.format_version, full.parts, full.parent, full.partial) == (1, [], None, False)
    assert (inc.type, inc.parent) == ("incremental", full_id)  # from the metadata the writer recorded
    for i, m in enumerate((full, inc)):
        for j in range(2):
            assert read(repo, m.stream(f"s{j}")) == random.Random(10 * i + j).randbytes(150_000 * (j + 1))
    [record] = repo.log_records("src")
    assert read(repo, record.stream) == random.Random(99).randbytes(80_000)
    assert repo.get_manifest(inc_id, "src").summary()["parent"] == full_id

    # today's writer keeps the repository at version 1, and the old code still reads what it wrote
    with repo.begin_backup("src", "test", "full") as txn:
        txn.write_stream("s0", io.BytesIO(b"new"))
        new = txn.commit()
    assert new.format_version == 1
    listed = run_old(old_tree, "list", str(root), SECRET)
    assert sorted(listed["manifests"]) == sorted([[full_id, 1, "full"], [inc_id, 1, "incremental"], [new.id, 1, "full"]])

    # after the upgrade the old code refuses it, naming the version (exit 3), never a crash
    from drkit.cli.upgrade import upgrade_repository

    upgrade_repository(repo)
    refused = run_old(old_tree, "list", str(root), SECRET)
    assert refused["error"] == "UnsupportedFormat" and refused["exit"] == 3
    assert "format version 2 is not supported" in refused["message"]
    assert {m.id for m in Repository.open(storage, wrapper()).list_manifests()} == {full_id, inc_id, new.id}
