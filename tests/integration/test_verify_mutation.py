"""The mutation test of ``verify``: 1,000 random single-byte corruptions spread over every object
kind of a small real repository (local storage), each verified in-process, full and ``--quick``
(and the pack-body ones ``--sample 50`` too).

The repository is built through drkit's library (tests/unit/test_verify_objects.py's pattern):
one backup of two streams, four WAL-like log records (two of them sealed into a log catalog
object), the PostgreSQL dumper's ``sources/`` object (written by its own code, no server), a
lease, a drill record, a forget record and a two-part backup (its part records).  Each trial
XORs one byte of one object file with a random non-zero value, runs the verifier, and restores
the file.

What must hold:

- the full verify reports a problem naming the damaged object's key -- except a flip of JSON
  whitespace into other JSON whitespace in the two plaintext objects (``config``, whose MAC covers
  its canonical JSON, and ``keys/*``, whose self-check covers the same): the parsed document is
  unchanged, so nothing is damaged (docs/repository-format.md, "Bytes no check covers").  Those
  are counted apart and verify must report nothing for them;
- a damaged manifest, log record, log catalog object or chunk names what it breaks (``affects``);
- ``--quick`` catches every corruption outside chunk bodies and none inside them (it reads no
  chunk: that is what the weekly full or sampled run is for);
- ``--sample 50`` catches a chunk-body flip exactly when the damaged pack is in its sample.

The seed is fixed (``DRKIT_VERIFY_MUTATION_SEED`` overrides it); the summary line (kinds x caught)
is printed (``pytest -s``) and is in every assertion message.
"""

from __future__ import annotations

import io
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import ClassVar

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_repository import backup, realistic  # noqa: E402

from drkit.config import Secret  # noqa: E402
from drkit.dumpers.postgres import objects as pg_objects  # noqa: E402
from drkit.dumpers.postgres.wal import check_system_id  # noqa: E402
from drkit.repository import Repository, forgotten, leases, logcat  # noqa: E402
from drkit.repository.drills import put_drill  # noqa: E402
from drkit.repository.keys import SecretWrapper  # noqa: E402
from drkit.storage.local import LocalStorage  # noqa: E402
from drkit.verify import verify  # noqa: E402
from drkit.verify_sample import in_sample  # noqa: E402

TRIALS = 1000
SEED = int(os.environ.get("DRKIT_VERIFY_MUTATION_SEED", "1307"))
SAMPLE = 50.0
SAMPLE_SEED = 4
WAL = [f"00000001000000000000000{i}" for i in range(1, 5)]
JSON_SPACE = b" \t\n\r"


class CachedKek(SecretWrapper):
    """The test wrapper, with scrypt memoized per (salt, n, r, p): 2,000 verifies re-unwrap the
    envelope in use (AES-GCM, for real) without 2,000 scrypt runs."""

    _keks: ClassVar[dict[tuple, bytes]] = {}

    def _kek(self, salt: bytes, n: int, r: int, p: int) -> bytes:
        if (salt, n, r, p) not in self._keks:
            self._keks[(salt, n, r, p)] = super()._kek(salt, n, r, p)
        return self._keks[(salt, n, r, p)]


def wrapper() -> CachedKek:
    return CachedKek(Secret("correct horse battery staple"), "test key", "key_env")


class PgSource:
    def __init__(self, name: str) -> None:
        self.name = name

    def source_objects(self, repo: Repository) -> list[tuple[str, str | None, str]]:
        return pg_objects.source_objects(repo, self.name)


def build(root: Path) -> tuple[Repository, LocalStorage, dict[str, list[str]]]:
    """The repository, and the keys of each object kind (packs: backup packs, log packs)."""
    storage = LocalStorage(root)
    repo = Repository.init(storage, wrapper())
    m = backup(repo, "db", {"base.tar": realistic(300_000), "extra": os.urandom(30_000)})
    for name in WAL:
        repo.put_log("db", name, io.BytesIO(os.urandom(12_000)))
    singles = [r for r in (logcat.read_single(repo, "db", n) for n in WAL[:2]) if r is not None]
    cat_key, _ = logcat.write_object(repo, "db", logcat.day_of(singles[0]) or "20261207", singles)
    for name in WAL[:2]:
        storage.delete(f"logs/db/{name}")
    check_system_id(repo, "db", 7_300_000_000_000_000_001)
    leases.acquire(repo, "follow", "db", 3600, "the follower")
    drill = put_drill(repo, "db", "20261207T120000Z-abcdef", {"ok": True, "rpo_seconds": 12.5})
    forget = forgotten.record(repo, "db", ["000000010000000000000000"], [], "test")
    with repo.begin_backup("cluster", "test", "full") as txn:
        for part_name in ("n1", "n2"):
            part = txn.part(part_name, host=f"{part_name}.example")
            part.write_stream("s.tar", io.BytesIO(realistic(40_000, seed=len(part_name) + ord(part_name[-1]))))
            part.finish()
        txn.commit()
    repo = Repository.open(storage, wrapper())
    every = sorted(i.key for i in storage.list(""))
    log_packs = {r[1] for name in WAL[2:] for r in logcat.read_single(repo, "db", name).stream.chunks}
    log_packs |= {r[1] for rec in singles for r in rec.stream.chunks}
    packs = [k for k in every if k.startswith("data/")]
    kinds = {
        "config": ["config"],
        "key": [k for k in every if k.startswith("keys/")],
        "index": [k for k in every if k.startswith("index/") and not k.startswith("index/log/")],
        "index-log": [k for k in every if k.startswith("index/log/")],
        "pack-magic": packs, "pack-header": packs, "pack-trailer": packs,
        "pack-body": [k for k in packs if k.rsplit("/", 1)[1] not in log_packs],
        "log-pack-body": [k for k in packs if k.rsplit("/", 1)[1] in log_packs],
        "manifest": [k for k in every if k.startswith("manifests/")],
        "part": [k for k in every if k.startswith("parts/")],
        "log": [k for k in every if k.startswith("logs/")],
        "logcat": [cat_key], "lease": ["leases/follow/db"], "drill": [drill], "forgotten": [forget],
        "source-object": [k for k in every if k.startswith("sources/")],
    }
    assert all(kinds.values()), kinds
    assert m.id and sum(len(v) for v in kinds.values()) > 20
    return repo, storage, kinds


def span(kind: str, data: bytes) -> tuple[int, int]:
    """The byte range of ``data`` a corruption of ``kind`` picks from."""
    if not kind.startswith(("pack", "log-pack")):
        return 0, len(data)
    hstart = len(data) - 4 - int.from_bytes(data[-4:], "little")
    return {"pack-magic": (0, 4), "pack-header": (hstart, len(data) - 4), "pack-trailer": (len(data) - 4, len(data)),
            "pack-body": (4, hstart), "log-pack-body": (4, hstart)}[kind]


def harmless(kind: str, old: bytes, new: bytes, pos: int) -> bool:
    """A flip the format leaves unchecked because it changes nothing: JSON whitespace into JSON
    whitespace in a plaintext object (the parsed document is the same)."""
    if kind not in ("config", "key") or old[pos] not in JSON_SPACE or new[pos] not in JSON_SPACE:
        return False
    assert json.loads(old) == json.loads(new)
    return True


def run(repo: Repository, **kw):  # noqa: ANN003
    return verify(repo, dumpers={"db": PgSource("db")}, wrapper=wrapper(), **kw)


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    return build(tmp_path_factory.mktemp("verify-mutation") / "repo")


def test_every_flipped_byte_that_matters_is_reported_naming_its_object(repository) -> None:
    repo, storage, kinds = repository
    assert run(repo).problems == [] and run(repo, quick=True).problems == []
    rng = random.Random(SEED)
    order = sorted(kinds)
    trials: Counter[str] = Counter()
    full: Counter[str] = Counter()
    quick: Counter[str] = Counter()
    benign: Counter[str] = Counter()
    sample_hits = sample_expected = 0
    failures: list[str] = []
    t0 = time.monotonic()
    for i in range(TRIALS):
        kind = order[i % len(order)]
        key = rng.choice(kinds[kind])
        path = storage.root / key
        old = path.read_bytes()
        lo, hi = span(kind, old)
        pos = rng.randrange(lo, hi)
        new = bytearray(old)
        new[pos] ^= rng.randrange(1, 256)
        path.write_bytes(bytes(new))
        try:
            trials[kind] += 1
            report = run(repo)
            named = [p for p in report.problems if p["object"] == key]
            if harmless(kind, old, bytes(new), pos):
                benign[kind] += 1
                if report.problems:
                    failures.append(f"{kind} {key}@{pos}: a harmless whitespace flip reported: {report.problems}")
                continue
            if named:
                full[kind] += 1
            else:
                failures.append(f"{kind} {key}@{pos} ({old[pos]:#04x}->{new[pos]:#04x}): full verify names it not: "
                                f"{report.problems}")
            if kind in ("manifest", "log", "logcat", "pack-body", "log-pack-body"):
                failures += [f"{kind} {key}@{pos}: no affects: {p}" for p in named if not p["affects"]]
            if any(p["object"] == key for p in run(repo, quick=True).problems):
                quick[kind] += 1
            if kind.endswith("pack-body"):
                hit = any(p["object"] == key for p in run(repo, sample=SAMPLE, seed=SAMPLE_SEED).problems)
                expected = in_sample(key.rsplit("/", 1)[1], SAMPLE, SAMPLE_SEED)
                sample_hits += hit
                sample_expected += expected
                if hit != expected:
                    failures.append(f"{kind} {key}@{pos}: --sample caught={hit}, in the sample={expected}")
        finally:
            path.write_bytes(old)
    seconds = time.monotonic() - t0
    summary = f"verify mutation ({TRIALS} trials, seed {SEED}, {seconds:.0f} s): " + ", ".join(
        f"{k} {full[k]}/{trials[k] - benign[k]} full, {quick[k]} quick" + (f", {benign[k]} harmless" if benign[k] else "")
        for k in order) + f"; --sample {SAMPLE:g} seed {SAMPLE_SEED}: {sample_hits} of {sample_expected} in-sample body flips"
    print("\n" + summary)
    assert not failures, "\n".join(failures[:20]) + "\n" + summary
    assert sum(trials.values()) == TRIALS and min(trials.values()) >= TRIALS // len(order), summary
    bodies = ("pack-body", "log-pack-body")
    # Whitespace flips are a small share of the plaintext objects' bytes, and only theirs.
    assert set(benign) <= {"config", "key"} and sum(benign.values()) < (trials["config"] + trials["key"]) // 3, summary
    for k in order:
        assert full[k] == trials[k] - benign[k], summary
        # --quick reads no chunk: it misses every chunk-body flip and nothing else.
        assert quick[k] == (0 if k in bodies else trials[k] - benign[k]), summary
    assert 0 < sample_expected < trials["pack-body"] + trials["log-pack-body"], summary  # the sample is partial
    assert run(repo).problems == []  # every file was restored


def test_whitespace_flips_in_plaintext_objects_are_harmless_and_unreported(repository) -> None:
    repo, storage, kinds = repository
    for key in ("config", kinds["key"][0]):
        path = storage.root / key
        old = path.read_bytes()
        pos = old.index(b" ")
        try:
            path.write_bytes(old[:pos] + b"\t" + old[pos + 1:])
            assert harmless("key", old, path.read_bytes(), pos)
            assert run(repo).problems == []
        finally:
            path.write_bytes(old)


def test_envelope_whose_check_field_name_is_damaged_is_reported(repository) -> None:
    # Found by the mutation test: '"check"' -> '"c`eck"' left an envelope that still opens, has no
    # self-check any more and carries an unknown field; verify passed it.
    repo, storage, kinds = repository
    path = storage.root / kinds["key"][0]
    old = path.read_bytes()
    try:
        path.write_bytes(old.replace(b'"check"', b'"c`eck"'))
        [p] = run(repo).problems
        assert p["object"] == kinds["key"][0] and "unknown field 'c`eck' and no 'check' field" in p["error"]
        assert p["affects"]  # the envelope the configured key opens
    finally:
        path.write_bytes(old)
    assert run(repo).problems == []


def test_verify_of_one_source_checks_its_objects_and_every_shared_one(repository) -> None:
    repo, storage, kinds = repository
    whole = run(repo)
    one = verify(repo, dumpers={}, wrapper=wrapper(), source="cluster")
    assert one.problems == [] and one.warnings == [] and one.source == "cluster"
    assert (one.manifests, one.log_segments) == (1, 0) and whole.manifests == 2
    assert 0 < one.chunks < whole.chunks and "(source cluster)" in one.text()
    db_manifest = next(k for k in kinds["manifest"] if k.startswith("manifests/db/"))
    db_pack = "data/{0:.2}/{0}".format(repo._load_manifest_key(db_manifest).streams[0].chunks[0][1])
    for kind, seen_by_cluster in (("manifest", False), ("log", False), ("pack-body", False),
                                  ("source-object", False), ("drill", False), ("index", True), ("key", True),
                                  ("part", True)):
        key = {"manifest": db_manifest, "pack-body": db_pack}.get(kind, kinds[kind][0])
        path = storage.root / key
        old = path.read_bytes()
        pos = (span(kind, old)[0] + span(kind, old)[1]) // 2
        try:
            path.write_bytes(old[:pos] + bytes([old[pos] ^ 0x40]) + old[pos + 1:])
            named = [p["object"] for p in verify(repo, dumpers={}, wrapper=wrapper(), source="cluster").problems]
            assert (key in named) is seen_by_cluster, (kind, key, named)
            assert key in [p["object"] for p in run(repo).problems], (kind, key)
        finally:
            path.write_bytes(old)
