"""drkit.dumpers.durable: restored files are fsynced on a clean exit unless --no-sync."""

from __future__ import annotations

import os

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


def test_an_error_inside_the_block_closes_without_fsync_and_propagates(tmp_path, calls):
    with pytest.raises(RuntimeError), durable.RestoreFile(tmp_path / "f") as f:
        f.write(b"partial")
        raise RuntimeError("rewrite failed")
    assert ("fsync",) not in calls
    with pytest.raises(OSError):
        os.fstat(f.fd)  # closed


def test_sync_tree_and_sync_dir_accept_a_directory(tmp_path):
    (tmp_path / "a").write_bytes(b"x")
    durable.sync_tree(tmp_path)
    durable.sync_dir(tmp_path)
    with pytest.raises(FileNotFoundError):
        durable.sync_tree(tmp_path / "missing")
