"""``drkit verify``: every manifest, log record, index and chunk must decrypt and hash right.

Each distinct chunk is read once; a failure names the storage object and every backup or log
segment that needs it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from drkit.config import Config
from drkit.errors import DrkitError
from drkit.repository import Repository
from drkit.repository.format import INDEX_PREFIX, LOG_PREFIX, MANIFEST_PREFIX
from drkit.repository.reader import fetch_chunk


@dataclass
class VerifyReport:
    repository: str
    manifests: int = 0
    log_segments: int = 0
    chunks: int = 0
    bytes: int = 0
    seconds: float = 0.0
    problems: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": not self.problems}

    def text(self) -> str:
        head = (
            f"verified {self.repository}: {self.manifests} backups, {self.log_segments} log segments, "
            f"{self.chunks} chunks ({self.bytes / 1e6:.1f} MB) in {self.seconds:.1f} s"
        )
        if not self.problems:
            return head + ": OK"
        lines = [head + f": {len(self.problems)} PROBLEM(S)"]
        for p in self.problems:
            lines.append(f"  {p['object']}: {p['error']}")
            if p.get("affects"):
                lines.append(f"    affects: {', '.join(p['affects'][:20])}")
        return "\n".join(lines)


def verify_repository(config: Config) -> VerifyReport:
    """Deep-verify the repository, then check every configured source's log chain."""
    from drkit.dumpers import dumper_for
    from drkit.ops import open_repository

    repo = open_repository(config)
    report = verify(repo)
    for name in sorted(config.sources):
        try:
            window = dumper_for(config, name).window(repo)
        except DrkitError as exc:
            report.problems.append({"object": f"source {name}", "error": str(exc), "affects": []})
            continue
        for note in window.notes:
            report.problems.append({"object": f"source {name} chain", "error": note, "affects": []})
    return report


def verify(repo: Repository) -> VerifyReport:
    t0 = time.monotonic()
    report = VerifyReport(repo.storage.url)
    # Keyed by location, not chunk id: the same chunk may be stored in several packs (WAL is
    # pushed without dedup, concurrent writers cannot see each other), and each copy in use
    # must be readable.
    users: dict[tuple, list[str]] = defaultdict(list)
    refs: dict[tuple, list] = {}
    for info in repo.storage.list(INDEX_PREFIX):
        try:
            repo._open_json("index", info.key, repo.storage.get(info.key))
        except DrkitError as exc:
            report.problems.append({"object": info.key, "error": str(exc), "affects": []})
    for info in repo.storage.list(MANIFEST_PREFIX):
        try:
            m = repo._load_manifest_key(info.key)
        except (DrkitError, ValueError) as exc:
            report.problems.append({"object": info.key, "error": str(exc), "affects": [info.key]})
            continue
        report.manifests += 1
        for s in m.streams:
            for ref in s.chunks:
                loc = (ref[1], int(ref[2]), int(ref[3]))
                users[loc].append(f"backup {m.source}/{m.id}")
                refs.setdefault(loc, ref)
    for info in repo.storage.list(LOG_PREFIX):
        source, name = info.key[len(LOG_PREFIX):].split("/", 1)
        try:
            rec = repo.get_log(source, name)
        except (DrkitError, ValueError) as exc:
            report.problems.append({"object": info.key, "error": str(exc), "affects": [f"log {source}/{name}"]})
            continue
        if rec is None:
            continue
        report.log_segments += 1
        for ref in rec.stream.chunks:
            loc = (ref[1], int(ref[2]), int(ref[3]))
            users[loc].append(f"log {source}/{name}")
            refs.setdefault(loc, ref)

    def check(ref: list) -> tuple[list, str | None, int]:
        try:
            return ref, None, len(fetch_chunk(repo, ref, fallback=False))
        except DrkitError as exc:
            return ref, str(exc), 0

    with ThreadPoolExecutor(4) as pool:
        for ref, err, size in pool.map(check, refs.values()):
            report.chunks += 1
            report.bytes += size
            if err:
                report.problems.append({
                    "object": f"data/{ref[1][:2]}/{ref[1]}", "chunk": ref[0], "error": err,
                    "affects": sorted(set(users[(ref[1], int(ref[2]), int(ref[3]))])),
                })
    report.seconds = time.monotonic() - t0
    return report
