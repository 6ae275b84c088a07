"""Run the drkit CLI with cProfile in *every* thread and report per thread group.

cProfile (and ``python -m cProfile``) only sees the main thread; drkit's work happens in thread
pools (``drkit-chunk_N``: hash/compress/encrypt/self-check, ``drkit-upload_N``, ``drkit-fetch_N``).
This wraps ``threading.Thread.run`` so each thread gets its own profiler and records its CPU time
(``time.thread_time``); at exit the stats are merged by thread-name prefix and printed.

    /opt/drkit/venv/bin/python bench/profile_drkit.py --out prof.txt -- --config drkit.yaml backup SRC
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import re
import sys
import threading
import time

_lock = threading.Lock()
_profiles: list[tuple[str, cProfile.Profile, float, float]] = []  # (name, prof, cpu, wall)


def _group(name: str) -> str:
    return re.sub(r"_\d+$", "_N", name)


_orig_run = threading.Thread.run


def _profiled_run(self: threading.Thread) -> None:
    prof = cProfile.Profile()
    c0, w0 = time.thread_time(), time.monotonic()
    prof.enable()
    try:
        _orig_run(self)
    finally:
        prof.disable()
        with _lock:
            _profiles.append((self.name, prof, time.thread_time() - c0, time.monotonic() - w0))


def report(top: int) -> str:
    groups: dict[str, list[tuple[cProfile.Profile, float, float]]] = {}
    for name, prof, cpu, wall in _profiles:
        groups.setdefault(_group(name), []).append((prof, cpu, wall))
    out = io.StringIO()
    out.write("thread group          threads   CPU s (sum)   wall s (max)\n")
    for g, items in sorted(groups.items(), key=lambda kv: -sum(i[1] for i in kv[1])):
        out.write(f"{g:22s} {len(items):6d} {sum(i[1] for i in items):12.2f} {max(i[2] for i in items):13.2f}\n")
    for g, items in sorted(groups.items(), key=lambda kv: -sum(i[1] for i in kv[1])):
        stats = pstats.Stats(items[0][0], stream=out)
        for prof, _, _ in items[1:]:
            stats.add(prof)
        out.write(f"\n===== {g} ({len(items)} threads): top {top} by own time =====\n")
        stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("cli_args", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cli_args = [a for a in args.cli_args if a != "--"] if args.cli_args[:1] == ["--"] else args.cli_args
    threading.Thread.run = _profiled_run  # type: ignore[method-assign]
    from drkit.cli.main import main as drkit_main  # noqa: PLC0415

    sys.argv = ["drkit", *cli_args]
    prof = cProfile.Profile()
    c0, w0 = time.thread_time(), time.monotonic()
    rc = 0
    prof.enable()
    try:
        drkit_main()
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        prof.disable()
        _profiles.append(("MainThread", prof, time.thread_time() - c0, time.monotonic() - w0))
        with open(args.out, "w") as fh:
            fh.write(report(args.top))
    return rc


if __name__ == "__main__":
    sys.exit(main())
