"""drkit.dumpers.durable: restored files are fsynced on a clean exit unless --no-sync."""

from __future__ import annotations

import errno
import os
import socket
import threading

import pytest

from drkit.dumpers import durable


@pytest.fixture
def calls(monkeypatch):
    seen: list[tuple] = []
    real_fsync = os.fsync
    monkeypatch.setattr(durable.os, "fsync", lambda fd: (seen.append(("fsync",)), real_fsync(fd))[1])
    monkeypatch.setattr(durable, "_SYNC_FILE_RANGE", lambda fd, off, n, flags: seen.append(("range", off, n, flags)))
    return seen


def test_sync_writes_every_byte_starts_writeback_per_32_mib_and_fsyncs_once(tmp_path, calls):
    piece = os.urandom(1 << 20)
    with durable.RestoreFile(tmp_path / "f") as f:
        for _ in range(70):
            assert f.write(piece) == len(piece)
        f.write(memoryview(b"tail"))
    data = (tmp_path / "f").read_bytes()
    assert len(data) == 70 * len(piece) + 4 and data[:len(piece)] == piece and data.endswith(piece + b"tail")
    step = durable._WRITEBACK_EVERY
    assert calls == [("range", 0, step, durable._SYNC_FILE_RANGE_WRITE),
                     ("range", step, step, durable._SYNC_FILE_RANGE_WRITE), ("fsync",)]


def test_no_sync_writes_the_same_bytes_and_never_waits_for_the_disk(tmp_path, calls):
    piece = os.urandom(1 << 20)
    with durable.RestoreFile(tmp_path / "f", sync=False) as f:
        for _ in range(40):
            f.write(piece)
    assert (tmp_path / "f").read_bytes() == piece * 40
    assert calls == []


def test_an_error_inside_the_block_closes_without_fsync_and_propagates(tmp_path, calls, monkeypatch):
    closed: list[int] = []
    real_close = os.close
    monkeypatch.setattr(durable.os, "close", lambda fd: (closed.append(fd), real_close(fd))[1])
    with pytest.raises(RuntimeError), durable.RestoreFile(tmp_path / "f") as f:
        f.write(b"partial")
        raise RuntimeError("rewrite failed")
    assert ("fsync",) not in calls
    assert f.fd in closed


def test_writeback_runs_off_the_callers_thread(tmp_path, monkeypatch):
    threads: list[str] = []
    monkeypatch.setattr(durable, "_SYNC_FILE_RANGE", lambda *a: threads.append(threading.current_thread().name))
    with durable.RestoreFile(tmp_path / "f") as f:
        for _ in range(40):
            f.write(bytes(1 << 20))
    assert threads == ["drkit-writeback"]


def test_a_failing_fsync_is_raised(tmp_path, monkeypatch):
    def failing(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(durable.os, "fsync", failing)
    with pytest.raises(OSError, match="Input/output"), durable.RestoreFile(tmp_path / "f") as f:
        f.write(b"data")


def test_sync_tree_fsyncs_every_regular_file_and_directory_children_first(tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "base" / "1").mkdir(parents=True)
    (root / "global").mkdir()
    files = [root / "PG_VERSION", root / "base" / "1" / "1259", root / "global" / "pg_control"]
    for f in files:
        f.write_bytes(b"x" * 100)
    (root / "link").symlink_to(root / "PG_VERSION")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / ".s.PGSQL.5432"))  # opening it would fail with ENXIO
    seen: list[str] = []
    real = os.fsync
    monkeypatch.setattr(durable.os, "fsync", lambda fd: (seen.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd))[1])
    try:
        durable.sync_tree(root)
    finally:
        sock.close()
    dirs = [str(root / "base" / "1"), str(root / "base"), str(root / "global"), str(root)]
    assert sorted(seen[:3]) == sorted(map(str, files))
    assert set(seen[3:-1]) == set(dirs) and seen[-2] == str(root) and seen[-1] == str(tmp_path)
    assert seen.index(str(root / "base" / "1")) < seen.index(str(root / "base"))
    with pytest.raises(FileNotFoundError):
        durable.sync_tree(tmp_path / "missing")
