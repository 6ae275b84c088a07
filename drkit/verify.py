"""``drkit verify``: every object the repository format defines must open, parse and agree.

Read, in this order: ``config`` (re-read, MAC), every key envelope (structure; the one the
configured key opened is unwrapped again), every index file, every pack's magic, sealed header
and length trailer (authenticated, and agreeing with what the index files say the pack holds),
every ``sources/<source>/...`` object (through the source's dumper,
:meth:`~drkit.dumpers.Dumper.source_objects`), every lease, every manifest and log record, and
every distinct chunk they reference (decrypted, decompressed and re-hashed; each chunk read once).

Modes (``mode`` in the report): ``full`` (the above, the default), ``quick`` (everything above
but no chunk is read: each referenced chunk's pack must exist, hold the chunk's location inside
its size and list the chunk there in its sealed header -- a flipped byte inside a chunk's body
is **not** found), and ``sample`` (chunks are read in a P % sample of the packs and checked as
``quick`` elsewhere; which packs, and how consecutive runs cover them all: drkit/verify_sample.py).

A problem is ``{"object": key, "kind": ..., "error": ..., "affects": [...]}``; ``kind`` is one
of config, key, index, pack, source-object, lease, manifest, log, chunk (or chain, for a
source's chain notes).  ``affects`` lists the restore points a damaged object breaks; it is
empty for objects no restore needs, and the error then ends with "affects: none: ..." saying
what the damage does instead.  Objects under ``sources/`` that no configured dumper keeps are
``warnings`` ("unknown object"), not problems.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from drkit.catalog import RestorePoints
from drkit.config import Config
from drkit.errors import ConfigError, DrkitError, IntegrityError, NotFoundError, StorageError
from drkit.repository import Repository, leases, logcat
from drkit.repository import format as fmt
from drkit.repository.format import INDEX_PREFIX, LOG_PREFIX, MANIFEST_PREFIX
from drkit.repository.index import decode_index
from drkit.repository.keys import check_envelope, decode_envelope
from drkit.repository.manifest import iso
from drkit.repository.reader import fetch_chunk
from drkit.repository.writer import PACK_MAGIC
from drkit.verify_sample import check_percent, choose, default_seed, location_problem

if TYPE_CHECKING:
    from drkit.dumpers import Dumper
    from drkit.repository.keys import Wrapper

SOURCES_PREFIX = "sources/"
LEASE_AFFECTS = "none: treated as stale by the next job"
INDEX_AFFECTS = ("none directly: restores read chunks at the manifests' locations; deduplication and the "
                 "fallback for a stale location lose this file's entries (rebuildable from the packs' headers)")
PACK_HEADER_AFFECTS = ("none while its blobs read back (each chunk is checked too): the header and trailer only "
                       "let the index be rebuilt from the packs")
ALL_AFFECTED = "all restore points: the repository cannot be opened"
_TAIL = 64 * 1024  # bytes of a pack's end read at once (its sealed header and trailer, usually)


def _under(prefix: str, report: VerifyReport) -> str:
    """``prefix``, narrowed to the report's source when one was given."""
    return f"{prefix}{report.source}/" if report.source else prefix


@dataclass
class VerifyReport:
    repository: str
    source: str | None = None  # verify SOURCE: that source's objects (and every shared one) only
    manifests: int = 0
    log_segments: int = 0
    chunks: int = 0
    bytes: int = 0
    seconds: float = 0.0
    packs: int = 0
    mode: str = "full"  # full | quick | sample
    sample_percent: float | None = None
    seed: int | None = None  # the sample's seed (replay with --seed)
    sampled_packs: int = 0  # stored packs whose referenced chunks were read
    chunks_located: int = 0  # chunks checked without reading (their pack is not read)
    problems: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": not self.problems}

    def problem(self, kind: str, key: str, error: str, affects: list[str] | None = None,
                impact: str | None = None) -> None:
        """Record one damaged object; ``impact`` (with no ``affects``) says why no restore breaks."""
        text = f"{error}; affects: {impact}" if impact and not affects else error
        self.problems.append({"object": key, "kind": kind, "error": text, "affects": affects or []})

    def text(self) -> str:
        head = (
            f"verified {self.repository}{f' (source {self.source})' if self.source else ''}: "
            f"{self.manifests} backups, {self.log_segments} log segments, "
            f"{self.chunks} chunks ({self.bytes / 1e6:.1f} MB) in {self.seconds:.1f} s"
        )
        if self.mode == "quick":
            head += f" (quick: no chunk read, {self.chunks_located} chunk locations checked)"
        elif self.mode == "sample":
            head += (f" (sample {self.sample_percent:g} %, seed {self.seed}: read {self.sampled_packs} of "
                     f"{self.packs} packs, {self.chunks_located} chunk locations checked unread)")
        lines = [head + (f": {len(self.problems)} PROBLEM(S)" if self.problems else ": OK")]
        for p in self.problems:
            lines.append(f"  {p['object']} ({p.get('kind', '?')}): {p['error']}")
            if p.get("affects"):
                lines.append(f"    affects: {', '.join(p['affects'][:20])}")
        for w in self.warnings:
            lines.append(f"  warning: {w['object']}: {w['warning']}")
        return "\n".join(lines)


def verify_repository(config: Config, *, source: str | None = None, quick: bool = False,
                      sample: float | None = None, seed: int | None = None) -> VerifyReport:
    """Deep-verify the repository, then check every configured source's log chain.

    ``source``, ``quick``, ``sample`` and ``seed``: see :func:`verify` (with ``source``, only that
    source's chain is checked).

    A configuration error (e.g. a source type no installed dumper handles) is raised, not
    reported as damage: it is no property of the repository."""
    from drkit.dumpers import dumper_for
    from drkit.ops import open_repository
    from drkit.repository.keys import wrapper_from_config

    if source is not None and source not in config.sources:
        raise ConfigError(f"no source {source!r} in the configuration (configured: "
                          f"{', '.join(sorted(config.sources)) or 'none'}); give one of them, or no SOURCE to verify all")
    repo = open_repository(config)
    dumpers = {name: dumper_for(config, name) for name in sorted(config.sources) if source in (None, name)}
    report = verify(repo, dumpers=dumpers, wrapper=wrapper_from_config(config.encryption), source=source,
                    quick=quick, sample=sample, seed=seed)
    points: dict[str, RestorePoints] = {}
    for name, dumper in dumpers.items():
        try:
            points[name] = dumper.restore_points(dumper.catalog(repo))
        except ConfigError:
            raise
        except DrkitError as exc:
            report.problems.append({"object": f"source {name}", "kind": "chain", "error": str(exc), "affects": []})
            continue
        for note in points[name].notes:
            if "is damaged (" in note:  # reported as the damaged object itself
                continue
            report.problems.append({"object": f"source {name} chain", "kind": "chain", "error": note, "affects": []})
        for gap in points[name].gaps:
            item = {"object": f"source {name} chain", "kind": "chain", "error": gap.text(),
                    "affects": [f"{name}: every time after {iso(gap.after) if gap.after else 'its base'} through "
                                f"the chain of {gap.chain}"]}
            if gap.state == "in_flight":
                report.warnings.append({"object": item["object"], "warning": item["error"]})
            else:
                report.problems.append(item)
    name_affects(report, points)
    return report


def name_affects(report: VerifyReport, points: dict[str, RestorePoints]) -> None:
    """Fill each damaged manifest, log record and chunk's ``affects`` with the restore points
    that need it (from the dumpers' restore points), or say that none does."""
    for p in report.problems:
        kind, key = p.get("kind"), str(p.get("object", ""))
        if kind == "manifest" and key.startswith(MANIFEST_PREFIX):
            source, bid = key[len(MANIFEST_PREFIX):].split("/", 1)
            p["affects"] = [f"{source}: backup {bid} and every restore point based on it"]
        elif kind == "log" and key.startswith(LOG_PREFIX):
            source, name = key[len(LOG_PREFIX):].split("/", 1)
            sp = points.get(source)
            cut = [g for g in (sp.gaps if sp else []) if g.damaged and g.damaged.name == name]
            if cut:
                p["affects"] = [f"{source}: every time after {iso(g.after) if g.after else 'its base'} through the "
                                f"chain of {g.chain}" for g in cut]
            elif sp is not None:
                p["affects"] = []
                p["error"] += "; affects: none: no restore point needs this log record"
        elif kind == "chunk":
            hit: list[str] = []
            for user in p.get("affects", []):
                what, _, ref = user.partition(" ")
                source, _, name = ref.partition("/")
                for rp in (points[source].points if source in points else []):
                    if (what == "backup" and name in rp.manifests) or (what == "log" and name in rp.logs):
                        hit.append(f"{source}: {rp.kind} {rp.describe()}")
            p["users"] = p.get("affects", [])
            p["affects"] = sorted(set(hit)) or [f"{u} (no listed restore point)" for u in p["users"]]


def _verify_log_catalogs(repo: Repository, report: VerifyReport, singles: dict[tuple[str, str], bytes],
                         users: dict[tuple, list[str]], refs: dict[tuple, list]) -> None:
    """Every catalog object opens, parses and matches its key (source, names, count); each of its
    records agrees with the single record of the same name, if one exists.  A damaged one names
    the span it affects and how many of its records have no single object to fall back on."""
    for info in repo.storage.list(_under(fmt.LOGCAT_PREFIX, report)):
        cat = logcat.parse_key(info.key)
        if cat is None:
            report.problem("logcat", info.key, "not a log catalog key (logcat/<source>/<day>~<first>~<last>~"
                           "<count>~<hash>); the records it may hold are unknown", [info.key])
            continue
        try:
            records = logcat.load_object(repo, cat)
        except (DrkitError, ValueError) as exc:
            have = sum(1 for (s, n) in singles if s == cat.source and cat.covers(n))
            lost = max(0, cat.count - have)
            report.problem("logcat", info.key, f"damaged log catalog object: {exc}",
                           [f"{cat.source}: log records {cat.span} ({cat.count} records; "
                            + ("each still has its single object, so none is lost)" if not lost else
                               f"up to {lost} have no single object and are unreadable)")])
            continue
        for rec in records:
            single = singles.get((cat.source, rec.name))
            if single is not None:
                if single != hashlib.blake2b(rec.to_json(), digest_size=16).digest():
                    report.problem("logcat", fmt.log_key(cat.source, rec.name),
                                   f"log record {rec.name} differs between {fmt.log_key(cat.source, rec.name)} "
                                   f"and the catalog object {cat.key}; readers use the catalog object's copy "
                                   "(authoritative) and forget/prune will not delete the single object",
                                   [f"{cat.source}: log record {rec.name}"])
                continue
            report.log_segments += 1
            for ref in rec.stream.chunks:
                loc = (ref[1], int(ref[2]), int(ref[3]))
                users[loc].append(f"log {cat.source}/{rec.name}")
                refs.setdefault(loc, ref)


def verify(repo: Repository, *, dumpers: dict[str, Dumper] | None = None,
           wrapper: Wrapper | None = None, source: str | None = None, quick: bool = False,
           sample: float | None = None, seed: int | None = None) -> VerifyReport:
    """Verify every object of ``repo``.  ``dumpers`` (source name -> its dumper) claim and check
    the ``sources/`` objects; ``wrapper``, the configured key, re-unwraps the envelope in use.

    ``source``: of the per-source objects (manifests, log records and catalogs, ``sources/``,
    parts, forget and drill records) only that source's, and only the chunks they reference;
    every shared object (config, key envelopes, index files, pack headers, leases) still.
    ``quick``: read no chunk (locations are checked against the packs' headers and sizes);
    ``sample``: read the chunks of that percentage of the packs, chosen by ``seed`` (default: the
    week number; drkit/verify_sample.py).  Both at once raise :class:`ConfigError`."""
    if quick and sample is not None:
        raise ConfigError("--quick and --sample exclude each other: --quick reads no chunk, --sample P reads "
                          "those of P % of the packs; give one")
    t0 = time.monotonic()
    report = VerifyReport(repo.storage.url, source=source,
                          mode="quick" if quick else "sample" if sample is not None else "full")
    if sample is not None:
        check_percent(sample)
        report.sample_percent = float(sample)
        report.seed = default_seed() if seed is None else int(seed)
    _verify_config(repo, report)
    _verify_keys(repo, report, wrapper)
    pack_index = _verify_indexes(repo, report)
    # Keyed by location, not chunk id: the same chunk may be stored in several packs (WAL is
    # pushed without dedup, concurrent writers cannot see each other), and each copy in use
    # must be readable.
    users: dict[tuple, list[str]] = defaultdict(list)
    refs: dict[tuple, list] = {}
    for info in repo.storage.list(_under(MANIFEST_PREFIX, report)):
        try:
            m = repo._load_manifest_key(info.key)
        except (DrkitError, ValueError) as exc:
            report.problem("manifest", info.key, str(exc), [info.key])
            continue
        report.manifests += 1
        for s in m.streams:
            for ref in s.chunks:
                loc = (ref[1], int(ref[2]), int(ref[3]))
                users[loc].append(f"backup {m.source}/{m.id}")
                refs.setdefault(loc, ref)
    singles: dict[tuple[str, str], bytes] = {}  # (source, name) -> its record's JSON, for the catalog check
    for info in repo.storage.list(_under(LOG_PREFIX, report)):
        source, name = info.key[len(LOG_PREFIX):].split("/", 1)
        try:
            rec = logcat.read_single(repo, source, name)  # the object itself, not a catalog's copy
        except (DrkitError, ValueError) as exc:
            report.problem("log", info.key, str(exc), [f"log {source}/{name}"])
            continue
        if rec is None:
            continue
        singles[(source, name)] = hashlib.blake2b(rec.to_json(), digest_size=16).digest()
        report.log_segments += 1
        for ref in rec.stream.chunks:
            loc = (ref[1], int(ref[2]), int(ref[3]))
            users[loc].append(f"log {source}/{name}")
            refs.setdefault(loc, ref)
    _verify_log_catalogs(repo, report, singles, users, refs)
    headers, sizes = _verify_packs(repo, report, pack_index, users)
    _verify_source_objects(repo, report, dumpers or {})
    _verify_leases(repo, report)
    _verify_forgotten(repo, report)
    _verify_drills(repo, report)
    _verify_parts(repo, report)

    def check(ref: list) -> tuple[list, str | None, int]:
        try:
            return ref, None, len(fetch_chunk(repo, ref, fallback=False))
        except DrkitError as exc:
            return ref, str(exc), 0

    referenced = {loc[0] for loc in refs}
    if report.mode == "full":
        read = referenced | set(sizes)
    elif report.mode == "quick":
        read = set()
    else:
        read = choose(referenced | set(sizes), float(sample or 0), int(report.seed or 0))
    report.sampled_packs = len(read & set(sizes))
    for loc, ref in refs.items():
        if loc[0] in read:
            continue
        report.chunks_located += 1
        indexed = set(pack_index[loc[0]]) if loc[0] not in headers and loc[0] in pack_index else None
        err = location_problem(ref, sizes.get(loc[0]), headers.get(loc[0]), indexed, len(PACK_MAGIC))
        if err:
            report.problems.append({"object": fmt.pack_key(ref[1]), "kind": "chunk", "chunk": ref[0], "error": err,
                                    "affects": sorted(set(users[loc]))})

    with ThreadPoolExecutor(4) as pool:
        for ref, err, size in pool.map(check, [ref for loc, ref in refs.items() if loc[0] in read]):
            report.chunks += 1
            report.bytes += size
            if err:
                report.problems.append({
                    "object": f"data/{ref[1][:2]}/{ref[1]}", "kind": "chunk", "chunk": ref[0], "error": err,
                    "affects": sorted(set(users[(ref[1], int(ref[2]), int(ref[3]))])),
                })
    report.seconds = time.monotonic() - t0
    return report


# -- config and key envelopes ---------------------------------------------------------------------
def _verify_config(repo: Repository, report: VerifyReport) -> None:
    key = fmt.CONFIG_KEY
    try:
        doc = json.loads(repo.storage.get(key))
        config = doc["config"]
        mac = doc["mac"]
    except NotFoundError:
        report.problem("config", key, "missing", [ALL_AFFECTED])
        return
    except (ValueError, KeyError, TypeError) as exc:
        report.problem("config", key, f"not a drkit repository config ({type(exc).__name__}: {exc})", [ALL_AFFECTED])
        return
    body = json.dumps(config, sort_keys=True).encode()
    if not isinstance(mac, str) or not repo.keys.check_mac(body, mac):
        report.problem("config", key, "MAC mismatch (corrupted or tampered config)", [ALL_AFFECTED])
    elif config != repo.config:
        report.problem("config", key, "changed since this run opened the repository", [ALL_AFFECTED])


def _b64_len(env: dict[str, Any], name: str, length: int | None = None) -> None:
    value = env.get(name)
    if not isinstance(value, str):
        raise ValueError(f"field {name!r} is missing or not a string")
    try:
        raw = base64.b64decode(value.encode(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"field {name!r} is not base64") from None
    if (length is not None and len(raw) != length) or not raw:
        raise ValueError(f"field {name!r} holds {len(raw)} bytes" + (f", not {length}" if length else ""))


_ENVELOPE_FIELDS = frozenset({"version", "kind", "source", "kdf", "nonce", "wrapped", "kms_key_id", "kms_blob",
                              "check"})


def check_envelope_structure(env: Any) -> None:
    """Raise ValueError naming what is wrong with a decoded key envelope (docs/repository-format.md)."""
    if not isinstance(env, dict):
        raise ValueError("not a JSON object")
    if env.get("version") != 1:
        raise ValueError(f"version {env.get('version')!r}, not 1")
    unknown = sorted(set(env) - _ENVELOPE_FIELDS)
    if unknown and "check" not in env:
        # A drkit that writes a field this one does not know writes the self-check too (it
        # predates any such field) and the check covers it; without a check, an unknown field is
        # a damaged field name -- e.g. the check's own, which would otherwise go unnoticed.
        raise ValueError(f"unknown field {unknown[0]!r} and no 'check' field (a damaged field name)")
    _b64_len(env, "nonce", 12)
    _b64_len(env, "wrapped", 32 + 16)  # the master key and the GCM tag
    kind = env.get("kind")
    if kind == "secret":
        kdf = env.get("kdf")
        if not isinstance(kdf, dict) or kdf.get("name") != "scrypt":
            raise ValueError("field 'kdf' is not an scrypt description")
        if not all(isinstance(kdf.get(p), int) and kdf[p] > 0 for p in ("n", "r", "p")):
            raise ValueError("scrypt parameters n, r, p are not positive integers")
        _b64_len(kdf, "salt", 16)
        if env.get("source") not in ("key_file", "key_env"):
            raise ValueError(f"unknown secret source {env.get('source')!r}")
    elif kind == "kms":
        if not isinstance(env.get("kms_key_id"), str) or not env["kms_key_id"]:
            raise ValueError("field 'kms_key_id' is missing")
        _b64_len(env, "kms_blob")
    else:
        raise ValueError(f"unknown envelope kind {kind!r}")


def _verify_keys(repo: Repository, report: VerifyReport, wrapper: Wrapper | None) -> None:
    infos = list(repo.storage.list(fmt.KEYS_PREFIX))
    if not infos:
        report.problem("key", fmt.KEYS_PREFIX, "no key envelope (keys/ is empty)", [ALL_AFFECTED])
    for info in sorted(infos, key=lambda i: i.key):
        key_id = info.key[len(fmt.KEYS_PREFIX):]
        in_use = key_id == repo.key_id
        affects = [f"all restore points, unless another envelope opens the repository: {key_id} is the one the "
                   "configured key opens"] if in_use else []
        impact = "none while the configured key opens the repository through another envelope"
        try:
            env = decode_envelope(repo.storage.get(info.key))
            check_envelope_structure(env)
            check_envelope(env)  # also its self-checksum, when it carries one
        except NotFoundError:
            continue  # removed by a key rotation while listed
        except ValueError as exc:
            report.problem("key", info.key, f"damaged key envelope: {exc}", affects, impact)
            continue
        if in_use and wrapper is not None and repo._master is not None:
            try:
                ok = wrapper.unwrap(env, repo.id, key_id) == repo._master
            except DrkitError as exc:
                if isinstance(exc, StorageError):  # e.g. the key service is down: not damage
                    raise
                ok = False
            except (KeyError, ValueError, TypeError):
                ok = False
            if not ok:
                report.problem("key", info.key, "damaged key envelope: the configured key opened it when this run "
                               "started and does not unwrap the master key from it now", affects)


# -- indexes and packs ----------------------------------------------------------------------------
def _verify_indexes(repo: Repository, report: VerifyReport) -> dict[str, dict[tuple, str]]:
    """Parse every index file; return pack id -> {(blob id, offset, length, raw): index key}."""
    packs: dict[str, dict[tuple, str]] = defaultdict(dict)
    for info in repo.storage.list(INDEX_PREFIX):
        try:
            doc = decode_index(repo._open_json("index", info.key, repo.storage.get(info.key)))
            if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("packs"), list):
                raise ValueError("not an index document (version 1 with a 'packs' list)")
            entries = []
            for pack in doc["packs"]:
                for blob_id, offset, length, raw in pack["blobs"]:
                    entries.append((str(pack["id"]), (str(blob_id), int(offset), int(length), int(raw))))
        except NotFoundError:
            continue  # removed by prune while listed
        except DrkitError as exc:
            report.problem("index", info.key, str(exc).removeprefix(f"{info.key}: "), [], INDEX_AFFECTS)
            continue
        except (ValueError, KeyError, TypeError) as exc:
            report.problem("index", info.key, f"does not parse: {exc}", [], INDEX_AFFECTS)
            continue
        for pack_id, entry in entries:
            packs[pack_id][entry] = info.key
    return packs


def read_pack_header(repo: Repository, key: str, pack_id: str, size: int) -> list[tuple[str, int, int, int]]:
    """Check a pack's magic, length trailer and sealed header; return the header's blob list.

    Raise :class:`IntegrityError` naming ``key`` and what is wrong."""
    def bad(what: str) -> IntegrityError:
        return IntegrityError(f"{key}: {what}", key=key)

    if size < len(PACK_MAGIC) + 4:
        raise bad(f"{size} bytes: too short to be a pack (truncated)")
    if repo.storage.get(key, 0, len(PACK_MAGIC)) != PACK_MAGIC:
        raise bad("bad magic (not a drkit pack, or its first bytes are damaged)")
    start = max(len(PACK_MAGIC), size - _TAIL)
    tail = repo.storage.get(key, start, size - start)
    hlen = int.from_bytes(tail[-4:], "little")
    hstart = size - 4 - hlen
    if hlen == 0 or hstart < len(PACK_MAGIC):
        raise bad(f"length trailer says the header is {hlen} bytes, which does not fit the {size}-byte pack "
                  "(damaged trailer, or a truncated pack)")
    sealed = tail[hstart - start: -4] if hstart >= start else repo.storage.get(key, hstart, hlen)
    try:
        plain = repo.keys.open(sealed, fmt.object_aad("packheader", pack_id), what=key)
    except IntegrityError as exc:
        raise bad(f"sealed header: {str(exc).removeprefix(f'{key}: ')} (damaged header or length trailer)") from None
    try:
        doc = json.loads(plain)
        if doc["pack"] != pack_id:
            raise ValueError(f"it names pack {doc['pack']!r}")
        blobs = [(str(b), int(o), int(n), int(r)) for b, o, n, r in doc["blobs"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise bad(f"sealed header does not parse: {exc}") from None
    pos = len(PACK_MAGIC)
    for blob_id, offset, length, _raw in blobs:
        if offset != pos or length <= 0:
            raise bad(f"header places blob {blob_id[:16]} at {offset}+{length}, expected offset {pos}")
        pos += length
    if pos != hstart:
        raise bad(f"header's blobs end at {pos}, the sealed header starts at {hstart}")
    return blobs


def _verify_packs(repo: Repository, report: VerifyReport, pack_index: dict[str, dict[tuple, str]],
                  users: dict[tuple, list[str]]) -> tuple[dict[str, set[tuple]], dict[str, int]]:
    """Check every pack's magic, header and trailer against the index files; return the blobs
    each readable header lists and each stored pack's size (both by pack id)."""
    headers: dict[str, set[tuple]] = {}
    by_pack: dict[str, set[str]] = defaultdict(set)
    for (pack, _off, _len), names in users.items():
        by_pack[pack].update(names)
    stored = {info.key: info for info in repo.storage.list(fmt.DATA_PREFIX)}

    def check(key: str) -> tuple[str, str | None, list]:
        pack_id = key.rsplit("/", 1)[-1]
        try:
            return key, None, read_pack_header(repo, key, pack_id, stored[key].size)
        except NotFoundError:
            return key, "missing (removed while listed)", []
        except DrkitError as exc:
            return key, str(exc).removeprefix(f"{key}: "), []

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(check, sorted(stored)))
    for key, err, blobs in results:
        pack_id = key.rsplit("/", 1)[-1]
        report.packs += 1
        if err:
            report.problem("pack", key, err, [], PACK_HEADER_AFFECTS)
            continue
        in_header = headers[pack_id] = set(blobs)
        named = pack_index.get(pack_id, {})
        if not named and by_pack.get(pack_id):
            report.problem("index", key, "named by no index file although committed backups or log records use it: "
                           "an index object is missing or damaged (dedup and prune lose track of the pack until "
                           "an index names it again)", [], "none: restores read pack locations from the manifests "
                           "and log records")
        elif not named:
            report.warnings.append({"object": key, "kind": "pack", "warning": "named by no index file (left by an "
                                    "interrupted write, or its index file is damaged)"})
        wrong = sorted(e for e in named if e not in in_header)
        if wrong:
            blob_id, off, length, _raw = wrong[0]
            report.problem("pack", key, f"{len(wrong)} index entr{'y' if len(wrong) == 1 else 'ies'} (e.g. blob "
                           f"{blob_id[:16]} at {off}+{length}, in {named[wrong[0]]}) not in the pack's header",
                           [], "restores that fall back to the index for these chunks")
    for pack_id, named in sorted(pack_index.items()):
        key = fmt.pack_key(pack_id)
        if key not in stored:
            report.problem("pack", key, f"missing, but named by {sorted(set(named.values()))[0]}",
                           sorted(by_pack.get(pack_id, ())), "none: no manifest or log record uses it")
    return headers, {k.rsplit("/", 1)[-1]: info.size for k, info in stored.items()}


# -- sources/ objects and leases ------------------------------------------------------------------
def _verify_source_objects(repo: Repository, report: VerifyReport, dumpers: dict[str, Dumper]) -> None:
    claimed: set[str] = set()
    for name, dumper in sorted(dumpers.items()):
        try:
            objects = dumper.source_objects(repo)
        except ConfigError:
            raise
        except DrkitError as exc:
            report.problem("source-object", f"{SOURCES_PREFIX}{name}/", str(exc), [], "unknown")
            continue
        for key, err, affects in objects:
            claimed.add(key)
            if err:
                report.problem("source-object", key, err, [], affects)
    for info in repo.storage.list(_under(SOURCES_PREFIX, report)):
        if info.key not in claimed:
            report.warnings.append({"object": info.key, "kind": "source-object",
                                    "warning": "unknown object: no configured source's dumper keeps it "
                                               "(a removed source's, or a newer drkit's); not checked"})


def _verify_parts(repo: Repository, report: VerifyReport) -> None:
    """Part records (format version 2) open, parse and match their key.  No restore reads them
    (a committed manifest holds its parts); one of a backup never committed is a warning."""
    from drkit.repository.transaction import PartRecord

    for info in repo.storage.list(_under(fmt.PART_PREFIX, report)):
        try:
            record = PartRecord.from_json(repo._open_json("part", info.key, repo.storage.get(info.key)))
            if record.key != info.key:
                raise ValueError(f"claims to be {record.key}")
        except NotFoundError:
            continue
        except (DrkitError, ValueError, KeyError, TypeError) as exc:
            report.problem("part", info.key, str(exc).removeprefix(f"{info.key}: "), [],
                           "none: a committed backup's manifest holds its parts; an uncommitted backup "
                           "cannot be committed with it")
            continue
        source, bid = info.key[len(fmt.PART_PREFIX):].split("/")[:2]
        if not repo.storage.exists(fmt.manifest_key(source, bid)):
            report.warnings.append({"object": info.key, "kind": "part", "warning": f"part of backup {source}/{bid}, "
                                    "which is not committed (running, or abandoned: prune reclaims its data)"})


def _verify_forgotten(repo: Repository, report: VerifyReport) -> None:
    """Forget records (drkit/repository/forgotten.py) open and parse."""
    from drkit.repository import forgotten

    for info in repo.storage.list(_under(forgotten.PREFIX, report)):
        try:
            forgotten.load(repo, info.key)
        except NotFoundError:
            continue
        except (DrkitError, ValueError, KeyError, TypeError) as exc:
            report.problem("forgotten", info.key, str(exc).removeprefix(f"{info.key}: "), [],
                           "none: no restore reads it, but the holes forget left in log chains read as gaps "
                           "until it is restored from a copy")


def _verify_drills(repo: Repository, report: VerifyReport) -> None:
    """Drill records (drkit/repository/drills.py) open and parse."""
    from drkit.repository.drills import list_drills

    _, bad = list_drills(repo, report.source)
    for key, error in bad:
        report.problem("drill", key, error.removeprefix(f"{key}: "), [],
                       "none: no restore reads it; the drill's evidence is lost for reports")


def _verify_leases(repo: Repository, report: VerifyReport) -> None:
    for info in repo.storage.list(leases.PREFIX):
        try:
            leases.load(repo, info.key)
        except IntegrityError as exc:
            report.problem("lease", info.key, f"damaged lease: {str(exc).removeprefix(f'{info.key}: ')}", [],
                           LEASE_AFFECTS)
