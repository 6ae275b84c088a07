"""Keep glibc's malloc from growing one arena per thread.

drkit moves every chunk through a few worker threads (hash, compress, encrypt, self-check) and
upload threads.  glibc gives each thread its own malloc arena (up to 8 per core), and memory
freed in one arena is not reusable by the others, so peak RSS drifts upward with thread
scheduling: measured on the 1.5 GiB bounded-memory test, 150-170 MiB and once 257 MiB under
load with the default, a steady 137 MiB with two arenas.  Called once before the threads start;
a no-op where there is no glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

_M_ARENA_MAX = -8
_done = threading.Event()


def limit_malloc_arenas(arenas: int = 2) -> None:
    if _done.is_set():
        return
    _done.set()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        pass
