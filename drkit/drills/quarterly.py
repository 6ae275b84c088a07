"""``drkit report quarterly``: a quarter's stored drills, aggregated for the auditors.

A drill belongs to the quarter (UTC boundaries) of its start time (the record's ``started``,
else its disaster time).  Per source, and rolled up per datastore as the records name it: drills
run, passed and failed (as each drill was judged against its own targets), how many missed the
RPO or the RTO target, worst and median RPO and RTO, and the trend against the previous quarters
that have drills.  Open problems: each failed drill's cause (and whether a later drill of the
source passed), every source without a drill in the quarter, every unreadable drill record.

:func:`aggregate` is pure (records in, a JSON-able dict out); :func:`write_quarterly` writes it
as ``quarterly-<Q>.json``, ``.md`` and a self-contained ``.html`` (rendered by
drkit/drills/report_quarterly.py); :func:`print_pdf` prints
that HTML with headless Chromium.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drkit.drills.charts import parse_iso
from drkit.errors import ConfigError, DrkitError

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
HISTORY = 4  # earlier quarters shown in the trend


@dataclass(frozen=True, order=True)
class Quarter:
    year: int
    q: int

    @classmethod
    def parse(cls, text: str) -> Quarter:
        m = re.fullmatch(r"\s*(\d{4})\s*-?\s*[Qq]([1-4])\s*", text or "")
        if not m:
            raise ConfigError(f"quarter {text!r} is not a quarter: write the year and the quarter, e.g. 2026Q4")
        return cls(int(m.group(1)), int(m.group(2)))

    @classmethod
    def of(cls, when: datetime) -> Quarter:
        when = when.astimezone(UTC)
        return cls(when.year, (when.month - 1) // 3 + 1)

    @property
    def start(self) -> datetime:
        return datetime(self.year, 3 * self.q - 2, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        """The first instant after the quarter."""
        nxt = self.next()
        return datetime(nxt.year, 3 * nxt.q - 2, 1, tzinfo=UTC)

    def next(self) -> Quarter:
        return Quarter(self.year + 1, 1) if self.q == 4 else Quarter(self.year, self.q + 1)

    def previous(self) -> Quarter:
        return Quarter(self.year - 1, 4) if self.q == 1 else Quarter(self.year, self.q - 1)

    def __str__(self) -> str:
        return f"{self.year}Q{self.q}"


def drill_start(record: dict[str, Any]) -> datetime | None:
    return parse_iso(record.get("started")) or parse_iso(record.get("disaster_at"))


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _missed(record: dict[str, Any], what: str) -> bool:
    value = _num(record.get(f"{what}_seconds"))
    target = _num((record.get("targets") or {}).get(f"{what}_seconds"))
    if what == "rpo" and value is None:
        return True  # no restore point: unbounded
    return value is not None and target is not None and value > target


def cause(record: dict[str, Any]) -> str:
    """Why a drill failed, in one line: its failures, else its error."""
    failures = [str(f) for f in record.get("failures") or []]
    if failures:
        return "; ".join(failures)
    err = record.get("error") or {}
    return str(err.get("message") or "failed (the record names no cause)")


def stats(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of a set of drills."""
    rpos = [v for r in records if (v := _num(r.get("rpo_seconds"))) is not None]
    rtos = [v for r in records if (v := _num(r.get("rto_seconds"))) is not None]
    passed = sum(1 for r in records if r.get("passed") is True)
    return {
        "drills": len(records), "passed": passed, "failed": len(records) - passed,
        "pass_rate": round(passed / len(records), 4) if records else None,
        "missed_rpo_target": sum(1 for r in records if _missed(r, "rpo")),
        "missed_rto_target": sum(1 for r in records if _missed(r, "rto")),
        "worst_rpo_seconds": max(rpos, default=None), "median_rpo_seconds": _median(rpos),
        "rpo_unbounded": sum(1 for r in records if _num(r.get("rpo_seconds")) is None),
        "worst_rto_seconds": max(rtos, default=None), "median_rto_seconds": _median(rtos),
        "rto_not_reached": sum(1 for r in records if _num(r.get("rto_seconds")) is None),
    }


def _trend(now: dict[str, Any], before: dict[str, Any] | None, quarter: str | None) -> dict[str, Any] | None:
    """The quarter against the latest earlier quarter with drills: deltas of the medians (lower
    is better) and of the pass rate (higher is better)."""
    if before is None or not now["drills"]:
        return None
    out: dict[str, Any] = {"against": quarter}
    for key in ("median_rpo_seconds", "median_rto_seconds", "worst_rpo_seconds", "worst_rto_seconds"):
        a, b = now[key], before[key]
        out[key] = None if a is None or b is None else {
            "now": a, "before": b, "change_seconds": round(a - b, 3),
            "change_percent": round(100 * (a - b) / b, 1) if b else None,
            "direction": "same" if a == b else "better" if a < b else "worse"}
    a, b = now["pass_rate"], before["pass_rate"]
    out["pass_rate"] = {"now": a, "before": b,
                        "direction": "same" if a == b else "better" if a > b else "worse"}
    return out


def aggregate(records: list[dict[str, Any]], quarter: Quarter, *, sources: list[str] | None = None,
              known_sources: dict[str, str] | None = None, unreadable: list[tuple[str, str]] | None = None,
              history: int = HISTORY) -> dict[str, Any]:
    """The quarterly report's data.  ``records`` are stored drill records (any quarter: the
    earlier ones feed the trend); ``sources`` restricts the report to those; ``known_sources``
    (name -> datastore: the configured sources and their dumper's entry-point name) are reported
    as problems when they have no drill in the quarter;
    ``unreadable`` are the (key, error) of records that could not be read."""
    problems: list[dict[str, Any]] = [
        {"kind": "unreadable_record", "source": _source_of_key(key), "key": key,
         "detail": f"drill record {key} cannot be read: {error}"}
        for key, error in unreadable or [] if not sources or _source_of_key(key) in sources]
    by_source: dict[str, dict[Quarter, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        src = str(r.get("source") or "?")
        if sources and src not in sources:
            continue
        started = drill_start(r)
        if started is None:
            problems.append({"kind": "unreadable_record", "source": src, "key": f"drills/{src}/{r.get('id')}",
                             "detail": f"drill record drills/{src}/{r.get('id')} has no start time"})
            continue
        by_source[src][Quarter.of(started)].append(r)
    names = sorted(set(sources or []) | set(by_source) | (set() if sources else set(known_sources or [])))
    rows, drills, earlier_drills = [], [], []
    datastores: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for src in names:
        quarters = by_source.get(src, {})
        mine = sorted(quarters.get(quarter, []), key=lambda r: str(drill_start(r)))
        every = [r for q in quarters.values() for r in q]
        datastore = next((str(r["datastore"]) for r in sorted(every, key=lambda r: str(drill_start(r)), reverse=True)
                          if r.get("datastore")), (known_sources or {}).get(src) or "unknown")
        earlier = sorted((q for q in quarters if q < quarter), reverse=True)[:history]
        hist = [{"quarter": str(q), **stats(quarters[q])} for q in sorted(earlier)]
        earlier_drills += [{"source": src, "quarter": str(q), "id": r.get("id"), "started": r.get("started"),
                            "passed": r.get("passed") is True, "rpo_seconds": _num(r.get("rpo_seconds")),
                            "rto_seconds": _num(r.get("rto_seconds"))} for q in sorted(earlier) for r in quarters[q]]
        row = {"source": src, "datastore": datastore, **stats(mine), "history": hist,
               "trend": _trend(stats(mine), hist[-1] if hist else None, hist[-1]["quarter"] if hist else None),
               "last_drill": _iso(max((s for r in every if (s := drill_start(r)) is not None and s < quarter.end),
                                      default=None))}
        rows.append(row)
        datastores[datastore] += mine
        if not mine:
            problems.append({"kind": "no_drill", "source": src, "datastore": datastore,
                             "detail": f"source {src} had no drill in {quarter}"
                                       + (f" (last drill: {row['last_drill']})" if row["last_drill"] else
                                          " (never drilled)")})
        for i, r in enumerate(mine):
            entry = {"source": src, "datastore": datastore, "id": r.get("id"), "started": r.get("started"),
                     "passed": r.get("passed") is True, "rpo_seconds": _num(r.get("rpo_seconds")),
                     "rto_seconds": _num(r.get("rto_seconds")), "targets": r.get("targets") or {},
                     "runbook": r.get("runbook")}
            if not entry["passed"]:
                entry["cause"] = cause(r)
                later = next((x.get("id") for x in mine[i + 1:] if x.get("passed") is True), None)
                problems.append({"kind": "failed_drill", "source": src, "datastore": datastore, "id": r.get("id"),
                                 "started": r.get("started"), "detail": entry["cause"],
                                 "exit_code": (r.get("error") or {}).get("exit_code"),
                                 "status": f"resolved: drill {later} passed later" if later else "open"})
            drills.append(entry)
    return {
        "kind": "quarterly_drill_report", "quarter": str(quarter),
        "start": _iso(quarter.start), "end": _iso(quarter.end),
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sources": rows,
        "datastores": [{"datastore": d, **stats(rs)} for d, rs in sorted(datastores.items())],
        "totals": stats([r for q in (by_source.get(s, {}).get(quarter, []) for s in names) for r in q]),
        "drills": drills, "earlier_drills": earlier_drills, "problems": problems,
    }


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _source_of_key(key: str) -> str:
    parts = key.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "drills" else "?"


def write_quarterly(data: dict[str, Any], out: Path) -> list[Path]:
    """``quarterly-<Q>.json``, ``.md`` and ``.html`` in ``out`` (created); returns their paths."""
    from drkit.drills.report_quarterly import render_html, render_markdown

    base = out / f"quarterly-{data['quarter']}"
    paths = [base.with_suffix(".json"), base.with_suffix(".md"), base.with_suffix(".html")]
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths[0].write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        paths[1].write_text(render_markdown(data))
        paths[2].write_text(render_html(data))
    except OSError as exc:
        raise DrkitError(f"cannot write the quarterly report into {out}: {exc.strerror or exc}; "
                         "choose a writable --out directory") from None
    return paths


def find_chromium() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    raise ConfigError("--pdf needs headless Chromium and none is on PATH (looked for "
                      + ", ".join(CHROMIUM_NAMES) + "): install the OS package 'chromium' "
                      "(scripts/install.sh does), or leave out --pdf and print the HTML yourself")


def print_pdf(html_path: Path, pdf_path: Path, timeout: float = 120.0) -> Path:
    """Print ``html_path`` to ``pdf_path`` with headless Chromium, network off."""
    binary = find_chromium()
    with tempfile.TemporaryDirectory(prefix="drkit-chromium-") as profile:
        argv = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
                f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND", "--no-pdf-header-footer",
                f"--print-to-pdf={pdf_path}", html_path.resolve().as_uri()]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise DrkitError(f"Chromium did not print {html_path} to PDF within {timeout:.0f} s") from None
    if proc.returncode != 0 or not pdf_path.is_file() or pdf_path.stat().st_size == 0:
        tail = "\n".join((proc.stderr or "").strip().splitlines()[-5:])
        raise DrkitError(f"Chromium ({binary}) failed to print {html_path} to {pdf_path} (exit {proc.returncode}): "
                         f"{tail or 'no output'}")
    return pdf_path
