"""A progress bar for long-running commands, on stderr, only when stderr is a terminal.

Nothing is written otherwise (pipes, files, ``--json``, ``--log-format json``): the output of a
command run by cron or a CronJob is exactly what it was without this module.  Bytes come from
the repository writer (:data:`drkit.repository.writer.PROGRESS`), so every datastore's backup
reports them without knowing of the display.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


def wanted(*, as_json: bool = False, log_format: str = "text", stream: TextIO | None = None) -> bool:
    """True when a progress bar may be shown: a terminal, and no machine-readable output."""
    stream = stream or sys.stderr
    if as_json or log_format == "json":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


@contextmanager
def progress(description: str, *, enabled: bool, count_bytes: bool = True) -> Iterator[None]:
    """Show ``description`` with a spinner, the elapsed time and, with ``count_bytes``, the bytes
    the repository writer took in so far (and their rate); erased when the block ends.  Log lines
    written meanwhile are printed above the bar, whole, not through it."""
    if not enabled:
        yield
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        FileSizeColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    from drkit.repository.writer import PROGRESS

    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
    if count_bytes:
        columns += [FileSizeColumn(), TransferSpeedColumn()]
    columns.append(TimeElapsedColumn())
    bar = Progress(*columns, console=Console(stderr=True), transient=True, refresh_per_second=8)
    task = bar.add_task(description, total=None)
    token = PROGRESS.set((lambda n: bar.advance(task, n)) if count_bytes else None)
    stderr = sys.stderr
    moved: list[logging.StreamHandler] = []
    try:
        with bar:  # replaces sys.stderr by a proxy that prints above the bar
            for h in logging.getLogger().handlers:
                if isinstance(h, logging.StreamHandler) and h.stream is stderr and sys.stderr is not stderr:
                    h.setStream(sys.stderr)
                    moved.append(h)
            try:
                yield
            finally:
                for h in moved:
                    h.setStream(stderr)
    finally:
        PROGRESS.reset(token)
