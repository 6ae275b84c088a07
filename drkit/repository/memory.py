"""Tune glibc's malloc for drkit's traffic: a few threads moving 1-4 MiB buffers.

* Two arenas, not one per thread.  drkit moves every chunk through a few worker threads (hash,
  compress, encrypt, self-check) and upload threads.  glibc gives each thread its own arena (up
  to 8 per core), and memory freed in one arena is not reusable by the others, so peak RSS
  drifts upward with thread scheduling: measured on the 1.5 GiB bounded-memory test, 150-170 MiB
  and once 257 MiB under load with the default, a steady 137 MiB with two arenas.
* Chunk-sized buffers from the heap, not from mmap.  Above the mmap threshold every buffer is a
  fresh mapping whose pages the kernel faults in and zeroes on first touch, and unmaps on free:
  for a 1.8 GB restore (measured with the snapshot dumper) that was ~0.5 CPU s of page faults in the thread that sets the pace.
  A fixed 8 MiB threshold and a 32 MiB trim threshold keep those buffers reused (peak RSS of the
  restore: +~5 MB).
Called once before the threads start; a no-op where there is no glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_done = threading.Event()


def tune_malloc(arenas: int = 2, mmap_threshold: int = 8 << 20, trim_threshold: int = 32 << 20) -> None:
    if _done.is_set():
        return
    _done.set()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_ARENA_MAX, arenas)
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    except (OSError, AttributeError):
        pass
