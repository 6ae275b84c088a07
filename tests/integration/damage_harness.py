"""Mutation test of damage handling: one object deleted or one byte flipped, then every command
must either work exactly or refuse naming the object (issue 9, "Tests must prove").

The harness builds ONE small pristine repository from a real PostgreSQL (a table, a full backup,
commits in three archived WAL segments, a second full, more WAL; a second key envelope; a lease
left by a crashed job) and records, for every restore point ``drkit list --json`` shows, what a
pristine restore lays down (a digest of every file except the ones drkit writes per restore, and
drkit's recovery settings).  Each trial copies that repository, applies one seeded mutation to
one object of one kind of the format, and runs -- through the CLI, as an operator would --
``verify --json``, ``list --json`` and a restore of every restore point into a fresh directory,
judging each against the rules:

- a restore exits 0 and lays down exactly the pristine tree (same files, same recovery
  settings) of the backup it names, or exits non-zero with the documented code and a message
  naming the damaged object's key (for a deleted log record: the segment; for a deleted
  manifest: the backup id), leaving the target directory as it was (empty);
- ``list`` answers (exit 0) and shows a damaged manifest or log record under ``damaged`` -- or,
  when ``config`` or the key envelope the configured key opens is damaged, refuses naming it;
- ``verify`` exits non-zero and names the object (``object`` equal to its key; a deleted log
  record as a chain problem naming the segment), and says which restore points it breaks, except
  for mutations nothing can observe (a deleted lease, a deleted second key envelope, a flip that
  leaves a plaintext JSON object equal as JSON).

A small sample of restores is also started for real (``--start``): the server must answer with
the pristine row count for that point, or the restore must refuse as above.

Entry points: :func:`build_pristine`, :func:`run_campaign` (used by
tests/integration/test_damage_mutation.py and bench/damage_mutation.py), :func:`run_trial` to
replay one trial from the seed a violation prints.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pgenv import DRKIT, PgEnv, make_pg_env  # noqa: E402

SOURCE = "main"
TABLE = "events"
# Exit codes (drkit/errors.py): what a refusal may exit with.
EXIT_REPOSITORY, EXIT_WRONG_KEY, EXIT_INTEGRITY, EXIT_OUTSIDE, EXIT_CHAIN, EXIT_NOT_FOUND = 3, 4, 5, 8, 9, 11
REFUSAL_CODES = {EXIT_REPOSITORY, EXIT_WRONG_KEY, EXIT_INTEGRITY, EXIT_OUTSIDE, EXIT_CHAIN}
# Files drkit writes per restore (never part of the backup): compared apart (settings) or not at all.
PER_RESTORE = {"postgresql.auto.conf", "recovery.signal", "drkit-restore.log"}

# (kind, mutation): the object kinds of docs/repository-format.md and what is done to one of them.
CELLS: list[tuple[str, str]] = [
    ("config", "delete"), ("config", "flip"),
    ("key", "delete"), ("key", "flip"),
    ("pack", "delete"), ("pack-header", "flip"), ("pack-trailer", "flip"), ("pack-blob", "flip"),
    ("index", "delete"), ("index", "flip"),
    ("index-log", "delete"), ("index-log", "flip"),
    ("manifest", "delete"), ("manifest", "flip"),
    ("log", "delete"), ("log", "flip"),
    ("system-id", "delete"), ("system-id", "flip"),
    ("lease", "delete"), ("lease", "flip"),
]


# -- the pristine repository ------------------------------------------------------------------------
@dataclass
class Restore:
    """One restore the harness runs per trial (a restore point, or the latest state)."""

    label: str
    args: list[str]
    backup: str | None  # the backup it must be based on (None: latest, whichever drkit picks)
    needs_manifests: list[str] = field(default_factory=list)
    needs_logs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Pristine:
    root: Path
    repo_dir: Path
    config: dict[str, Any]  # the configuration, repository url to be replaced per trial
    key_id: str  # the envelope the configured key opens
    restores: list[Restore]
    digests: dict[str, dict[str, str]]  # backup id -> relative path -> sha256 (laid-down tree)
    settings: dict[str, dict[str, str]]  # restore label -> drkit's recovery settings (normalized)
    listing: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # restore label -> rows (real starts, lazily)
    pg_stop: Callable[[], None] | None = None

    def close(self) -> None:
        if self.pg_stop:
            self.pg_stop()
        if not os.environ.get("DRKIT_KEEP_TEST_DIRS"):
            shutil.rmtree(self.root, ignore_errors=True)


def _commit(env: PgEnv, first: int, count: int) -> None:
    with env.conn() as c:
        for i in range(first, first + count):
            c.execute(f"INSERT INTO {TABLE} (id, pad) VALUES (%s, repeat('x', 200))", (i,))


def run_drkit(config_path: Path, *args: str, env: dict[str, str] | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The installed drkit CLI, as an operator runs it (real exit codes and messages)."""
    return subprocess.run([DRKIT, "--config", str(config_path), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, check=False)


def tree_digest(target: Path) -> dict[str, str]:
    """relative path -> sha256 of every file (symlink: its target) under ``target``, except the
    files drkit writes per restore."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(target):
        rel_dir = Path(dirpath).relative_to(target)
        for d in dirnames:
            p = Path(dirpath) / d
            if p.is_symlink():
                out[str(rel_dir / d)] = "symlink:" + os.readlink(p)
            else:
                out.setdefault(str(rel_dir / d) + "/", "dir")
        for f in filenames:
            rel = rel_dir / f
            if str(rel) in PER_RESTORE:
                continue
            p = Path(dirpath) / f
            if p.is_symlink():
                out[str(rel)] = "symlink:" + os.readlink(p)
                continue
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            out[str(rel)] = h.hexdigest()
    return out


_SETTING = re.compile(r"^(\w+) = '(.*)'$")


def recovery_settings(target: Path, config_path: Path) -> dict[str, str]:
    """drkit's section of postgresql.auto.conf, with the trial's config path normalized."""
    auto = target / "postgresql.auto.conf"
    if not auto.exists():
        return {}
    text = auto.read_text()
    _, sep, section = text.partition("# --- added by drkit restore ---")
    out = {}
    for line in section.splitlines() if sep else []:
        m = _SETTING.match(line.strip())
        if m:
            out[m.group(1)] = m.group(2).replace(str(config_path), "CONFIG")
    return out


def _restores_from(listing: dict[str, Any]) -> list[Restore]:
    out: list[Restore] = []
    for n, p in enumerate(listing["restore_points"]):
        needs = p.get("needs", {})
        common = {"needs_manifests": list(needs.get("manifests", [])), "needs_logs": dict(needs.get("logs") or {})}
        if p["kind"] == "backup":
            out.append(Restore(f"p{n}-backup-{p['backup']}", ["--backup", p["backup"]], p["backup"], **common))
        else:
            start, end = _parse(p["start"]), _parse(p["end"])
            mid = start + (end - start) / 2
            for tag, t in (("start", start), ("mid", mid), ("end", end)):
                out.append(Restore(f"p{n}-range-{tag}-{p['backup']}",
                                   ["--backup", p["backup"], "--point-in-time", t.isoformat()], p["backup"], **common))
    out.append(Restore("latest", ["--wait-in-flight", "0"], None))
    return out


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def build_pristine(tag: str = "damage-mut", log: Callable[[str], None] = print) -> Pristine:
    """The one pristine repository every trial copies, with what each restore of it lays down."""
    t0 = time.monotonic()
    env = make_pg_env(tag)
    try:
        cfg = yaml.safe_load(env.config_path.read_text())
        cfg["repository"]["gap_grace"] = 0  # a fresh hole is a gap at once
        env.config_path.write_text(yaml.safe_dump(cfg))
        with env.conn() as c:
            c.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, pad text)")
        _commit(env, 1, 5)
        env.drkit("backup", SOURCE)
        row = 6
        for _ in range(3):
            _commit(env, row, 5)
            row += 5
            env.switch_and_wait_archived()
        env.drkit("backup", SOURCE)
        for _ in range(2):
            _commit(env, row, 5)
            row += 5
            env.switch_and_wait_archived()
        escrow = env.root / "escrow.key"
        escrow.write_bytes(os.urandom(32).hex().encode())
        env.drkit("key", "add", "--new-key-file", str(escrow))
        _leave_lease(env.config_path)
    except BaseException:
        env.close()
        raise
    env.pg.stop()  # nothing below needs the source server: the repository is the catalog
    repo_dir = env.root / "repo"
    listing = json.loads(env.drkit("list", SOURCE, "--json").stdout)[0]
    assert not listing.get("gaps") and not listing.get("damaged"), listing
    verify = env.drkit("verify", "--json", check=False)
    assert verify.returncode == 0, f"pristine verify failed:\n{verify.stdout}\n{verify.stderr}"
    key_id = _key_in_use(repo_dir, escrow_added_last=True)
    pristine = Pristine(env.root, repo_dir, cfg, key_id, _restores_from(listing), {}, {}, listing, env=env.env,
                        pg_stop=None)
    # Two pristine restores of every backup: what differs between them is written per restore.
    base = env.root / "pristine-restores"
    base.mkdir()
    seen: dict[str, dict[str, str]] = {}
    for r in pristine.restores:
        target = base / r.label
        res = run_drkit(env.config_path, "restore", SOURCE, *r.args, "--target-dir", str(target), "--no-sync",
                        "--json", env=env.env)
        assert res.returncode == 0, f"pristine restore {r.label} failed:\n{res.stderr}"
        used = json.loads(res.stdout)["backup"]
        digest = tree_digest(target)
        pristine.settings[r.label] = recovery_settings(target, env.config_path)
        if used in seen:
            differ = sorted(k for k in set(seen[used]) | set(digest) if seen[used].get(k) != digest.get(k))
            assert not differ, f"two pristine restores of backup {used} differ in {differ}: not deterministic"
        seen[used] = digest
        if r.backup is None:
            r.backup = used
        shutil.rmtree(target)
    pristine.digests = seen
    log(f"pristine repository built in {time.monotonic() - t0:.0f} s: {len(listing['restore_points'])} restore "
        f"points, {len(pristine.restores)} restores per trial, {_du(repo_dir) / 1e6:.1f} MB ({repo_dir})")
    return pristine


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _leave_lease(config_path: Path) -> None:
    """A job lease as a crashed job leaves it (stale: its holder is gone, its TTL long past)."""
    from drkit.config import load_config
    from drkit.ops import open_repository
    from drkit.repository import leases

    repo = open_repository(load_config(config_path))
    leases.acquire(repo, "job", SOURCE, ttl=1.0, what="the damage harness's crashed job")


def _key_in_use(repo_dir: Path, escrow_added_last: bool) -> str:
    """The envelope written by init (the configured key's): the older of the two."""
    keys = sorted((p.stat().st_mtime_ns, p.name) for p in (repo_dir / "keys").iterdir())
    return keys[0][1] if escrow_added_last else keys[-1][1]


# -- mutations --------------------------------------------------------------------------------------
@dataclass
class Mutation:
    kind: str
    op: str  # "delete" | "flip"
    key: str  # the storage key of the object
    position: int | None = None
    mask: int | None = None
    region: str | None = None  # for pack flips: which part
    observable: bool = True  # False: no reader can tell (verify may pass)
    note: str = ""

    def describe(self) -> str:
        where = f" byte {self.position} ^0x{self.mask:02x}" if self.position is not None else ""
        return f"{self.op} {self.key}{where}" + (f" ({self.region})" if self.region else "")


def objects_of(repo_dir: Path, kind: str) -> list[str]:
    def keys(sub: str, pattern: str = "*") -> list[str]:
        base = repo_dir / sub
        return sorted(str(p.relative_to(repo_dir)) for p in base.glob(pattern) if p.is_file()) if base.exists() else []

    if kind == "config":
        return ["config"]
    if kind == "key":
        return keys("keys")
    if kind.startswith("pack"):
        return keys("data", "*/*")
    if kind == "index":
        return keys("index")
    if kind == "index-log":
        return keys("index/log")
    if kind == "manifest":
        return keys(f"manifests/{SOURCE}")
    if kind == "log":
        return keys(f"logs/{SOURCE}")
    if kind == "system-id":
        return keys(f"sources/{SOURCE}")
    if kind == "lease":
        return keys("leases", "**/*")
    raise ValueError(f"unknown object kind {kind!r}")


def pack_regions(data: bytes) -> dict[str, tuple[int, int]]:
    """Byte ranges of a pack: header (magic + sealed header), trailer (length), blobs."""
    size = len(data)
    hlen = int.from_bytes(data[-4:], "little")
    hstart = size - 4 - hlen
    return {"magic": (0, 4), "header": (hstart, size - 4), "trailer": (size - 4, size), "blob": (4, hstart)}


def choose_mutation(repo_dir: Path, kind: str, op: str, rng: random.Random, key_in_use: str) -> Mutation:
    keys = objects_of(repo_dir, kind)
    if not keys:
        raise AssertionError(f"the pristine repository has no object of kind {kind}")
    key = rng.choice(keys)
    path = repo_dir / key
    m = Mutation(kind, op, key)
    if op == "delete":
        if kind == "lease":
            m.observable, m.note = False, "a lease is deleted by its holder on release"
        if kind == "key" and key != f"keys/{key_in_use}":
            m.observable, m.note = False, "the escrow envelope: nothing left in the repository records it"
        if kind == "manifest":
            m.observable, m.note = False, "a deleted manifest leaves nothing that names it"
        return m
    data = path.read_bytes()
    if kind.startswith("pack-"):
        regions = pack_regions(data)
        region = kind.split("-", 1)[1]
        if region == "header":
            lo, hi = regions["magic"] if rng.random() < 0.1 else regions["header"]
            region = "magic" if (lo, hi) == regions["magic"] else "sealed header"
        else:
            lo, hi = regions[region]
        m.region = region
    else:
        lo, hi = 0, len(data)
    m.position = rng.randrange(lo, hi)
    m.mask = rng.randrange(1, 256)
    if kind in ("config", "key"):  # plaintext JSON: a flip in whitespace may change nothing
        flipped = bytearray(data)
        flipped[m.position] ^= m.mask
        try:
            same = json.loads(bytes(flipped)) == json.loads(data)
        except ValueError:
            same = False
        if same:
            m.observable, m.note = False, "the flipped object is equal as JSON"
    return m


def apply_mutation(repo_dir: Path, m: Mutation) -> None:
    path = repo_dir / m.key
    if m.op == "delete":
        path.unlink()
        return
    assert m.position is not None and m.mask is not None
    data = bytearray(path.read_bytes())
    data[m.position] ^= m.mask
    st = path.stat()
    path.chmod(st.st_mode | 0o200)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    path.chmod(st.st_mode)


# -- judging ----------------------------------------------------------------------------------------
@dataclass
class Violation:
    seed: int
    kind: str
    op: str
    key: str
    command: str
    exit_code: int | None
    what: str
    stderr: str = ""

    def text(self) -> str:
        err = self.stderr.strip().replace("\n", " | ")
        return (f"seed={self.seed} kind={self.kind} op={self.op} key={self.key}: {self.what} "
                f"[{self.command} -> exit {self.exit_code}] stderr: {err[:600]}")


@dataclass
class TrialResult:
    seed: int
    kind: str
    op: str
    mutation: Mutation
    verify_caught: bool = False
    verify_exempt: bool = False
    restores_exact: int = 0
    restores_refused: int = 0
    started: int = 0
    violations: list[Violation] = field(default_factory=list)
    seconds: float = 0.0


def refusal_codes(m: Mutation) -> set[int]:
    """The exit codes a refusal may have: the damage codes, and "backup not found" (11) when the
    backup's manifest was deleted (nothing is left that tells it from a backup never taken)."""
    return REFUSAL_CODES | ({EXIT_NOT_FOUND} if (m.kind, m.op) == ("manifest", "delete") else set())


def names_object(text: str, m: Mutation, pristine: Pristine) -> bool:
    """Does an error message name the damaged object (or what a deleted one was)?"""
    if m.key in text:
        return True
    name = m.key.rsplit("/", 1)[-1]
    if m.kind == "log" and name in text:  # a segment named by its name
        return True
    if m.kind == "manifest" and m.op == "delete" and name in text:  # a backup id
        return True
    if m.kind.startswith("pack") and name in text:
        return True
    return False


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def judge_verify(proc: subprocess.CompletedProcess[str], m: Mutation, t: TrialResult, pristine: Pristine,
                 cmd: str) -> None:
    def bad(what: str) -> None:
        t.violations.append(Violation(t.seed, t.kind, t.op, m.key, cmd, proc.returncode, what, proc.stderr))

    report = _json(proc.stdout)
    if not m.observable:
        t.verify_exempt = True
        if proc.returncode == 0:
            return
    if m.kind == "config" or (m.kind == "key" and m.key == f"keys/{pristine.key_id}"):
        # The repository does not open: verify refuses like every command, naming the object.
        if proc.returncode == 0:
            bad("verify passed over a damaged " + m.kind)
        elif proc.returncode not in REFUSAL_CODES:
            bad(f"verify exited {proc.returncode}, not a documented code for a damaged {m.kind}")
        elif not names_object(proc.stderr + proc.stdout, m, pristine) and not (
                m.kind == "key" and m.op == "delete" and proc.returncode == EXIT_WRONG_KEY):
            bad("verify refused without naming the damaged object")
        else:
            t.verify_caught = True
        return
    if proc.returncode == 0:
        bad("verify passed over the damage")
        return
    if report is None or not isinstance(report.get("problems"), list):
        bad(f"verify exited {proc.returncode} without a JSON report")
        return
    problems = report["problems"]
    if m.kind == "log" and m.op == "delete":
        segment = m.key.rsplit("/", 1)[-1]
        hit = [p for p in problems if p.get("kind") == "chain" and segment in p.get("error", "")]
    elif m.kind in ("index", "index-log") and m.op == "delete":
        # The deleted file's name is gone with it: verify names the packs no index describes.
        hit = [p for p in problems if p.get("kind") == "index" and "named by no index" in p.get("error", "")]
    elif m.kind == "system-id" and m.op == "delete":
        hit = [p for p in problems if p.get("object") == m.key or m.key in p.get("error", "")]
    else:
        hit = [p for p in problems if p.get("object") == m.key]
    if not hit:
        bad(f"verify failed but no problem names {m.key}: "
            f"{[(p.get('kind'), p.get('object')) for p in problems][:6]}")
        return
    for p in hit:
        if not p.get("affects") and "affects: none" not in p.get("error", ""):
            bad(f"verify names {m.key} but says neither which restore points it breaks nor that none do: {p}")
            return
    t.verify_caught = True


def judge_list(proc: subprocess.CompletedProcess[str], m: Mutation, t: TrialResult, pristine: Pristine,
               cmd: str) -> None:
    def bad(what: str) -> None:
        t.violations.append(Violation(t.seed, t.kind, t.op, m.key, cmd, proc.returncode, what, proc.stderr))

    unopenable = m.observable and (m.kind == "config" or (m.kind == "key" and m.key == f"keys/{pristine.key_id}"))
    if unopenable:
        if proc.returncode == 0:
            bad(f"list answered although the {m.kind} is damaged")
        elif proc.returncode not in REFUSAL_CODES:
            bad(f"list exited {proc.returncode}, not a documented code")
        elif not names_object(proc.stderr, m, pristine) and not (
                m.kind == "key" and m.op == "delete" and proc.returncode == EXIT_WRONG_KEY):
            bad("list refused without naming the damaged object")
        return
    if proc.returncode != 0:
        bad("list did not answer")
        return
    doc = _json(proc.stdout)
    if not doc:
        bad("list --json printed no JSON")
        return
    entry = doc[0]
    if m.op == "flip" and m.kind in ("manifest", "log"):
        if m.key not in {d.get("object") for d in entry.get("damaged", [])}:
            bad(f"list does not show {m.key} under damaged: {entry.get('damaged')}")
    if m.op == "delete" and m.kind == "log":
        segment = m.key.rsplit("/", 1)[-1]
        needed = _needed_segment(pristine, segment)
        if needed and not any(g.get("missing") == segment for g in entry.get("gaps", [])) and \
                segment not in json.dumps(entry.get("gaps", [])):
            bad(f"list shows no gap for the deleted segment {segment}: gaps={entry.get('gaps')}")


def _needed_segment(pristine: Pristine, segment: str) -> bool:
    """Is ``segment`` between the first and last log of some pristine restore point?"""
    for p in pristine.listing["restore_points"]:
        logs = (p.get("needs") or {}).get("logs") or {}
        if logs.get("first") and logs["first"] <= segment <= logs["last"]:
            return True
    return False


def judge_restore(proc: subprocess.CompletedProcess[str], target: Path, r: Restore, m: Mutation, t: TrialResult,
                  pristine: Pristine, cmd: str, config_path: Path) -> str:
    """'exact' | 'refused' | 'violation' | 'start' (judge it by starting the server)."""
    def bad(what: str) -> str:
        t.violations.append(Violation(t.seed, t.kind, t.op, m.key, cmd, proc.returncode, what, proc.stderr))
        return "violation"

    if proc.returncode == 0:
        res = _json(proc.stdout) or {}
        used = res.get("backup")
        if r.backup and r.args[:1] == ["--backup"] and used != r.backup:
            return bad(f"restored backup {used}, not the requested {r.backup}")
        expected = pristine.digests.get(used)
        if expected is None:
            return bad(f"restored backup {used}, which no pristine restore laid down")
        got = tree_digest(target)
        if got != expected:
            missing = sorted(set(expected) - set(got))
            extra = sorted(set(got) - set(expected))
            changed = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
            return bad(f"exit 0 but the laid-down tree differs from the pristine one: missing {missing[:5]}, "
                       f"extra {extra[:5]}, changed {changed[:5]}")
        settings = recovery_settings(target, config_path)
        want = pristine.settings.get(r.label) if used == r.backup or r.backup is None else None
        if r.label == "latest" and used != r.backup:
            want = None  # another base reaching the same end: its settings differ legitimately
        if want is not None and m.kind == "log" and settings != want:
            # The chain now ends earlier: drkit's recovery settings adapt (wal-fetch's --until
            # bound; no target time when the time asked for is at or past the chain's last
            # commit).  The laid-down files are the pristine ones: whether the server then
            # reaches the state asked for is judged by starting it and counting rows.
            return "start"
        if want is not None and settings != want:
            diff = {k: (want.get(k), settings.get(k)) for k in set(want) | set(settings) if want.get(k) != settings.get(k)}
            return bad(f"exit 0 but drkit's recovery settings differ from the pristine restore's: {diff}")
        return "exact"
    if proc.returncode not in refusal_codes(m):
        bad(f"refused with exit {proc.returncode}, not a documented damage code (3/4/5/8/9; 11 for a deleted "
            "manifest)")
    elif not names_object(proc.stderr, m, pristine) and not (
            m.kind == "key" and m.op == "delete" and proc.returncode == EXIT_WRONG_KEY) and not (
            not m.observable and m.kind == "key"):
        bad("refused without naming the damaged object")
    if target.exists() and any(target.iterdir()):
        return bad(f"refused but left files in the target: {sorted(p.name for p in target.iterdir())[:8]}")
    return "refused" if not any(v.command == cmd for v in t.violations) else "violation"


# -- trials -----------------------------------------------------------------------------------------
def trial_seed(master: int, kind: str, op: str, n: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{master}:{kind}:{op}:{n}".encode(), digest_size=6).digest(), "big")


def _trial_config(pristine: Pristine, repo_dir: Path, path: Path) -> None:
    cfg = json.loads(json.dumps(pristine.config))
    cfg["repository"]["url"] = f"file://{repo_dir}"
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o644)


def trial_restores(pristine: Pristine, rng: random.Random) -> list[Restore]:
    """Every restore point once: a backup point as itself, a range at one of its start, middle or
    end (chosen by the trial's seed, so a campaign covers all three), and the latest state."""
    out: list[Restore] = []
    ranges: dict[str, list[Restore]] = {}
    for r in pristine.restores:
        if "-range-" in r.label:
            ranges.setdefault(r.label.split("-range-")[0], []).append(r)
        else:
            out.append(r)
    return out + [rng.choice(rs) for rs in ranges.values()]


def run_trial(pristine: Pristine, kind: str, op: str, seed: int, *, start: Restore | None = None,
              threads: int = 2, keep: bool = False, one_time_per_range: bool = False) -> TrialResult:
    """Copy the pristine repository, apply the seeded mutation, run verify, list and a restore of
    every restore point (each range at its start, middle and end, or with ``one_time_per_range``
    at one of them)."""
    t0 = time.monotonic()
    rng = random.Random(seed)
    work = pristine.root / f"trial-{seed}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    work.chmod(0o755)
    repo_dir = work / "repo"
    subprocess.run(["cp", "-a", str(pristine.repo_dir), str(repo_dir)], check=True)
    config_path = work / "drkit.yaml"
    _trial_config(pristine, repo_dir, config_path)
    m = choose_mutation(repo_dir, kind, op, rng, pristine.key_id)
    if kind == "log" and op == "delete" and m.key.endswith(".backup"):
        m.observable, m.note = False, ("a backup history file: PostgreSQL's recovery never reads it, so its "
                                       "loss breaks no restore point")
    elif kind == "log" and op == "delete" and not _needed_segment(pristine, m.key.rsplit("/", 1)[-1]):
        m.observable, m.note = False, "a WAL segment no restore point needs (older than every backup)"
    elif kind == "log" and op == "delete" and m.key == objects_of(pristine.repo_dir, "log")[-1]:
        m.observable, m.note = False, ("the newest WAL segment: the repository alone cannot tell it from one "
                                       "not archived yet (the chain just ends earlier)")
    apply_mutation(repo_dir, m)
    t = TrialResult(seed, kind, op, m)

    def drkit(*args: str) -> tuple[str, subprocess.CompletedProcess[str]]:
        return "drkit " + " ".join(args), run_drkit(config_path, *args, env=pristine.env)

    def restore(r: Restore) -> tuple[Restore, Path, str, subprocess.CompletedProcess[str]]:
        target = work / "restores" / r.label
        target.mkdir(parents=True)  # exists and empty: "as it was" means empty afterwards
        args = ["restore", SOURCE, *r.args, "--target-dir", str(target), "--no-sync", "--json"]
        cmd, proc = drkit(*args)
        return r, target, cmd, proc

    with ThreadPoolExecutor(threads) as pool:
        fut_verify = pool.submit(drkit, "verify", "--json")
        fut_list = pool.submit(drkit, "list", SOURCE, "--json")
        outcomes = list(pool.map(restore, trial_restores(pristine, rng) if one_time_per_range else pristine.restores))
        cmd, proc = fut_verify.result()
        judge_verify(proc, m, t, pristine, cmd)
        cmd, proc = fut_list.result()
        judge_list(proc, m, t, pristine, cmd)
    for r, target, cmd, proc in outcomes:
        verdict = judge_restore(proc, target, r, m, t, pristine, cmd, config_path)
        t.restores_exact += verdict == "exact"
        t.restores_refused += verdict == "refused"
        shutil.rmtree(target, ignore_errors=True)
        if verdict == "start":
            _real_start(pristine, r, m, t, work, config_path)
    if start is not None:
        _real_start(pristine, start, m, t, work, config_path)
    if not keep and not os.environ.get("DRKIT_KEEP_TEST_DIRS"):
        shutil.rmtree(work, ignore_errors=True)
    t.seconds = time.monotonic() - t0
    return t


def _count_rows(target: Path, port: int) -> int:
    with psycopg.connect(f"host={target} port={port} user=postgres dbname=postgres", autocommit=True) as c:
        return c.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]


def _stop(target: Path) -> None:
    pg_ctl = shutil.which("pg_ctl") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))), None)
    if pg_ctl and (target / "postmaster.pid").exists():
        subprocess.run(["runuser", "-u", "postgres", "--", str(pg_ctl), "-D", str(target), "-m", "fast", "-w",
                        "stop"], capture_output=True, check=False, timeout=120)


def _started_restore(config_path: Path, r: Restore, target: Path,
                     env: dict[str, str]) -> tuple[str, subprocess.CompletedProcess[str], int | None]:
    args = ["restore", SOURCE, *r.args, "--target-dir", str(target), "--no-sync", "--start", "--json"]
    proc = run_drkit(config_path, *args, env=env)
    count = None
    try:
        if proc.returncode == 0:
            count = _count_rows(target, int(json.loads(proc.stdout)["port"]))
    finally:
        _stop(target)
    return "drkit " + " ".join(args), proc, count


def pristine_count(pristine: Pristine, r: Restore) -> int:
    """Rows the pristine repository gives for ``r`` (one real start, cached)."""
    if r.label not in pristine.counts:
        work = pristine.root / "ps"  # short: the server's socket lives in the target (107-byte limit)
        work.mkdir(exist_ok=True)
        cfg = work / "drkit.yaml"
        _trial_config(pristine, pristine.repo_dir, cfg)
        target = work / f"p{len(pristine.counts)}"
        target.mkdir()
        _, proc, count = _started_restore(cfg, r, target, pristine.env)
        shutil.rmtree(target, ignore_errors=True)
        assert proc.returncode == 0 and count is not None, f"pristine start of {r.label} failed: {proc.stderr}"
        pristine.counts[r.label] = count
    return pristine.counts[r.label]


def _real_start(pristine: Pristine, r: Restore, m: Mutation, t: TrialResult, work: Path, config_path: Path) -> None:
    want = pristine_count(pristine, r)
    target = work / "st"  # short: the server's socket lives in the target (107-byte limit)
    target.mkdir(parents=True)
    cmd, proc, count = _started_restore(config_path, r, target, pristine.env)
    t.started += 1

    def bad(what: str) -> None:
        t.violations.append(Violation(t.seed, t.kind, t.op, m.key, cmd, proc.returncode, what, proc.stderr))

    if proc.returncode == 0:
        if count != want:
            bad(f"--start: exit 0 but the server holds {count} rows, the pristine restore {want}")
        else:
            t.restores_exact += 1
    else:
        if proc.returncode not in refusal_codes(m):
            bad(f"--start: refused with exit {proc.returncode}, not a documented damage code (3/4/5/8/9; 11 for "
                "a deleted manifest)")
        elif not names_object(proc.stderr, m, pristine) and not (
                m.kind == "key" and m.op == "delete" and proc.returncode == EXIT_WRONG_KEY):
            bad("--start: refused without naming the damaged object")
        if target.exists() and any(target.iterdir()):
            bad(f"--start: refused but left files in the target: {sorted(p.name for p in target.iterdir())[:8]}")
        if not any(v.command == cmd for v in t.violations):
            t.restores_refused += 1
    shutil.rmtree(target, ignore_errors=True)


def wal_pack_keys(pristine: Pristine) -> set[str]:
    """Packs holding WAL (named by index/log/ files): their blobs only a started restore reads."""
    from drkit.config import load_config
    from drkit.ops import open_repository
    from drkit.repository import format as fmt
    from drkit.repository.index import decode_index

    cfg = pristine.root / "read.yaml"
    _trial_config(pristine, pristine.repo_dir, cfg)
    repo = open_repository(load_config(cfg))
    out: set[str] = set()
    for info in repo.storage.list("index/log/"):
        doc = decode_index(repo._open_json("index", info.key, repo.storage.get(info.key)))
        out.update(fmt.pack_key(p["id"]) for p in doc["packs"])
    return out


# -- campaigns --------------------------------------------------------------------------------------
@dataclass
class Campaign:
    results: list[TrialResult]
    seconds: float

    @property
    def violations(self) -> list[Violation]:
        return [v for t in self.results for v in t.violations]

    def table(self) -> str:
        head = f"{'kind':<14} {'op':<7} {'trials':>6} {'verify caught':>13} {'exempt':>6} {'exact':>6} " \
               f"{'refused':>7} {'started':>7} {'VIOLATIONS':>10}"
        lines = [head, "-" * len(head)]
        for kind, op in CELLS:
            ts = [t for t in self.results if (t.kind, t.op) == (kind, op)]
            if not ts:
                continue
            lines.append(f"{kind:<14} {op:<7} {len(ts):>6} {sum(t.verify_caught for t in ts):>13} "
                         f"{sum(t.verify_exempt and not t.verify_caught for t in ts):>6} "
                         f"{sum(t.restores_exact for t in ts):>6} {sum(t.restores_refused for t in ts):>7} "
                         f"{sum(t.started for t in ts):>7} {sum(len(t.violations) for t in ts):>10}")
        ts = self.results
        lines.append(f"{'total':<14} {'':<7} {len(ts):>6} {sum(t.verify_caught for t in ts):>13} "
                     f"{sum(t.verify_exempt and not t.verify_caught for t in ts):>6} "
                     f"{sum(t.restores_exact for t in ts):>6} {sum(t.restores_refused for t in ts):>7} "
                     f"{sum(t.started for t in ts):>7} {len(self.violations):>10}")
        return "\n".join(lines)


def per_kind(trials: int) -> dict[tuple[str, str], int]:
    """``trials`` trials per object kind, split evenly over its cells (pack: delete and the three
    flip regions), rounding up."""
    kinds: dict[str, list[tuple[str, str]]] = {}
    for kind, op in CELLS:
        kinds.setdefault(kind.split("-")[0] if kind.startswith("pack") else kind, []).append((kind, op))
    return {cell: -(-trials // len(cells)) for cells in kinds.values() for cell in cells}


def run_campaign(pristine: Pristine, trials: int | dict[tuple[str, str], int], *, master_seed: int = 9,
                 starts: int = 1, cells: list[tuple[str, str]] | None = None, threads: int = 2,
                 one_time_per_range: bool = False, log: Callable[[str], None] = print) -> Campaign:
    """``trials`` trials per (kind, mutation) cell (or a count per cell); ``starts`` of them also
    start a restore for real (the first one a WAL pack's damaged blob: what only a started
    restore reads)."""
    t0 = time.monotonic()
    cells = cells or CELLS
    counts = trials if isinstance(trials, dict) else {cell: trials for cell in cells}
    most = max(counts.values(), default=0)
    plan = [(kind, op, trial_seed(master_seed, kind, op, n)) for n in range(most) for kind, op in cells
            if n < counts.get((kind, op), 0)]
    start_at = _choose_starts(pristine, plan, starts, master_seed)
    results = []
    for i, (kind, op, seed) in enumerate(plan):
        t = run_trial(pristine, kind, op, seed, start=start_at.get(seed), threads=threads,
                      one_time_per_range=one_time_per_range)
        results.append(t)
        flag = f" {len(t.violations)} VIOLATION(S)" if t.violations else ""
        log(f"[{i + 1}/{len(plan)}] seed={seed} {kind} {t.mutation.describe()}: verify "
            f"{'caught' if t.verify_caught else 'exempt' if t.verify_exempt else 'MISSED'}, "
            f"{t.restores_exact} exact, {t.restores_refused} refused, {t.seconds:.1f} s{flag}")
        for v in t.violations:
            log("    " + v.text())
    return Campaign(results, time.monotonic() - t0)


def _choose_starts(pristine: Pristine, plan: list[tuple[str, str, int]], starts: int,
                   master_seed: int) -> dict[int, Restore]:
    """Which trials start a restore for real: first a WAL-pack blob flip restored to the latest
    state (its WAL is read only by a started server), then a random sample."""
    if starts <= 0:
        return {}
    rng = random.Random(master_seed)
    wal_packs = wal_pack_keys(pristine)
    latest = next(r for r in pristine.restores if r.label == "latest")
    chosen: dict[int, Restore] = {}
    for kind, op, seed in plan:
        if kind == "pack-blob":
            probe = choose_mutation(pristine.repo_dir, kind, op, random.Random(seed), pristine.key_id)
            if probe.key in wal_packs:
                chosen[seed] = latest
                break
    others = [seed for _, _, seed in plan if seed not in chosen]
    for seed in rng.sample(others, min(len(others), max(0, starts - len(chosen)))):
        chosen[seed] = rng.choice(pristine.restores)
    return chosen


def main_timestamp() -> str:
    return (datetime.now().astimezone() + timedelta(0)).isoformat(timespec="seconds")
