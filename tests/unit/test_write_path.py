"""The write path's self-check and the node-local data directory stream (no servers)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from drkit.errors import IntegrityError
from drkit.repository import blobs
from drkit.repository.crypto import Keys
from drkit.repository.format import BLOB_RAW, BLOB_ZSTD, blob_aad


@pytest.fixture
def keys() -> Keys:
    return Keys.from_master(os.urandom(32))


def _chunk(n: int = 300_000) -> bytes:
    return (b"patient record 2026-11-26 " * (n // 26 + 1))[:n]


def test_prepare_roundtrips_bytes_and_memoryviews(keys):
    data = _chunk()
    for item in (data, memoryview(bytearray(data))):
        prep = blobs.prepare(keys, item, 3, None)
        assert prep.raw_length == len(data) and prep.id == keys.chunk_id(data).hex()
        assert blobs.open_chunk(keys, prep.sealed, prep.id, len(data), what="t") == data
    incompressible = os.urandom(100_000)
    prep = blobs.prepare(keys, incompressible, 3, None)
    payload = keys.open(prep.sealed, blob_aad(bytes.fromhex(prep.id)), what="t")
    assert payload[0] == BLOB_RAW
    assert blobs.open_chunk(keys, prep.sealed, prep.id, len(incompressible), what="t") == incompressible


def test_known_chunk_is_not_sealed_again(keys):
    data = _chunk()
    prep = blobs.prepare(keys, data, 3, {keys.chunk_id(data).hex()})
    assert prep.sealed is None


class _BadCompressor:
    """Compresses a *different* chunk: valid zstd, wrong content."""

    def __init__(self, real):
        self.real = real

    def compress(self, data):
        wrong = bytearray(data)
        wrong[len(wrong) // 2] ^= 1
        return self.real.compress(bytes(wrong))


def test_self_check_catches_a_faulty_compressor(keys, monkeypatch):
    real = blobs._compressor(3)
    monkeypatch.setattr(blobs, "_compressor", lambda level: _BadCompressor(real))
    with pytest.raises(IntegrityError, match="self-check"):
        blobs.prepare(keys, _chunk(), 3, None)


def test_self_check_catches_undecodable_compression(keys, monkeypatch):
    class Garbage:
        def compress(self, data):
            return b"\x28\xb5\x2f\xfd" + b"\x00" * 40  # zstd magic, then nonsense

    monkeypatch.setattr(blobs, "_compressor", lambda level: Garbage())
    with pytest.raises(IntegrityError, match="self-check"):
        blobs.prepare(keys, _chunk(), 3, None)


def test_self_check_catches_faulty_encryption(keys, monkeypatch):
    real = Keys.seal_parts

    def flipping(self, head, body, aad):
        out = bytearray(real(self, head, body, aad))
        out[30] ^= 0x10
        return bytes(out)

    monkeypatch.setattr(Keys, "seal_parts", flipping)
    with pytest.raises(IntegrityError, match="self-check"):
        blobs.prepare(keys, _chunk(), 3, None)


def test_self_check_catches_a_wrong_raw_payload(keys):
    data = os.urandom(10_000)
    blob_id = keys.chunk_id(data)
    sealed = keys.seal_parts(bytes([BLOB_RAW]), data[:-1] + b"x", blob_aad(blob_id))
    with pytest.raises(IntegrityError):
        blobs.self_check(keys, sealed, blob_id, data)
    sealed = keys.seal_parts(bytes([BLOB_ZSTD]), data, blob_aad(blob_id))  # flag lies
    with pytest.raises(IntegrityError):
        blobs.self_check(keys, sealed, blob_id, data)


# ---- node-local data directory stream ------------------------------------------------------

SEG = 1024 * 1024
SYSID = 7_000_000_000_000_000_001


def _segment(segno: int) -> bytes:
    head = bytearray(40)
    struct.pack_into("<HHIQ", head, 0, 0xD110, 2, 1, segno * SEG)
    struct.pack_into("<QII", head, 24, SYSID, SEG, 8192)
    return bytes(head) + os.urandom(1000) + bytes(SEG - 1040)


def _fake_datadir(root: Path) -> dict[str, bytes]:
    files = {
        "PG_VERSION": b"15\n",
        "postgresql.conf": b"# conf\n",
        "global/pg_control": os.urandom(8192),
        "base/5/16384": os.urandom(3 * 8192),          # logged table
        "base/5/16384_fsm": os.urandom(8192),
        "base/5/16390": os.urandom(8192),              # unlogged: main fork skipped
        "base/5/16390_init": bytes(8192),              # ... its init fork kept
        "base/5/16390.1": os.urandom(100),
        "base/5/t3_16400": os.urandom(100),            # temporary relation: skipped
        "base/5/pg_internal.init": b"cache",           # skipped
        "base/pgsql_tmp/pgsql_tmp123.0": b"tmp",       # skipped
        "postmaster.pid": b"123\n",                    # skipped
        "backup_label": b"stale",                      # skipped (ours is added)
        "pg_stat_tmp/global.stat": b"x",               # contents skipped
        "pg_replslot/s/state": b"x",                   # contents skipped
        "pg_wal/000000010000000000000002": _segment(2),  # pg_wal contents come from the backup
        "pg_wal/000000010000000000000003": _segment(3),
        "pg_wal/000000010000000000000004": _segment(4),
        "pg_wal/00000001.history": b"",  # not realistic for TLI 1, but history files are copied
        "pg_wal/archive_status/000000010000000000000001.ready": b"",
        "empty": b"",
    }
    for rel, body in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(body)
    (root / "pg_tblspc").mkdir()
    return files


def _read_all(stream, step: int) -> bytes:
    out = bytearray()
    buf = bytearray(step)
    while True:
        n = stream.readinto(buf)
        if not n:
            return bytes(out)
        out += buf[:n]


@pytest.mark.parametrize("step", [7, 4096, 3 * 1024 * 1024])
def test_data_dir_stream_extracts_like_pg_basebackup(tmp_path, step):
    from drkit.dumpers.postgres.localbackup import _DataDirTar
    from drkit.dumpers.postgres.untar import extract

    src = tmp_path / "pgdata"
    files = _fake_datadir(src)
    label = "START WAL LOCATION: 0/200028 (file 000000010000000000000002)\nSTART TIMELINE: 1\n"
    stops = []

    def stop():
        stops.append(1)
        return "0/400100", label, ""

    tar = _DataDirTar(src, SEG, SYSID, "0/200028", stop)
    data = _read_all(tar, step)
    assert stops == [1] and tar.result is not None
    assert (tar.result.start_lsn, tar.result.stop_lsn, tar.result.timeline) == ("0/200028", "0/400100", 1)
    out = tmp_path / "out"
    out.mkdir()
    extract(iter([data[i : i + 100_000] for i in range(0, len(data), 100_000)]), out)
    got = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    skipped = {"base/5/16390", "base/5/16390.1", "base/5/t3_16400", "base/5/pg_internal.init",
               "base/pgsql_tmp/pgsql_tmp123.0", "postmaster.pid", "pg_stat_tmp/global.stat",
               "pg_replslot/s/state", "pg_wal/archive_status/000000010000000000000001.ready"}
    expected = {k: v for k, v in files.items() if k not in skipped}
    expected["backup_label"] = label.encode()
    for name in ("000000010000000000000002", "000000010000000000000003", "000000010000000000000004"):
        expected[f"pg_wal/archive_status/{name}.done"] = b""
    assert got == expected
    for d in ("pg_stat_tmp", "pg_replslot", "pg_wal/archive_status", "pg_tblspc", "base/pgsql_tmp"):
        assert (out / d).is_dir() == (d != "base/pgsql_tmp"), d


def test_stop_at_a_segment_boundary_needs_no_further_segment(tmp_path):
    from drkit.dumpers.postgres.localbackup import _DataDirTar

    src = tmp_path / "pgdata"
    _fake_datadir(src)
    (src / "pg_wal/000000010000000000000004").unlink()
    tar = _DataDirTar(src, SEG, SYSID, "0/200028", lambda: ("0/400000", "START TIMELINE: 1\n", ""))
    _read_all(tar, 1 << 20)  # 0/400000 ends segment 3: segment 4 is not needed
    assert tar.result is not None


def test_missing_or_recycled_wal_segment_fails_the_backup(tmp_path):
    from drkit.dumpers.postgres.localbackup import _DataDirTar
    from drkit.errors import SourceError

    src = tmp_path / "pgdata"
    _fake_datadir(src)
    (src / "pg_wal/000000010000000000000003").write_bytes(_segment(9))  # recycled: wrong address
    tar = _DataDirTar(src, SEG, SYSID, "0/200028", lambda: ("0/400100", "START TIMELINE: 1\n", ""))
    with pytest.raises(SourceError, match="000000010000000000000003"):
        _read_all(tar, 1 << 20)
    (src / "pg_wal/000000010000000000000003").unlink()
    tar = _DataDirTar(src, SEG, SYSID, "0/200028", lambda: ("0/400100", "START TIMELINE: 1\n", ""))
    with pytest.raises(SourceError, match="not in"):
        _read_all(tar, 1 << 20)


def test_file_that_shrinks_while_read_is_padded_and_one_that_grows_is_cut(tmp_path):
    from drkit.dumpers.postgres.localbackup import _DataDirTar
    from drkit.dumpers.postgres.untar import extract

    src = tmp_path / "pgdata"
    (src / "base/5").mkdir(parents=True)
    (src / "base/5/1").write_bytes(b"a" * 20000)
    (src / "base/5/2").write_bytes(b"b" * 20000)
    (src / "pg_wal").mkdir()
    (src / "pg_wal/000000010000000000000002").write_bytes(_segment(2))
    tar = _DataDirTar(src, SEG, SYSID, "0/200028", lambda: ("0/200100", "START TIMELINE: 1\n", ""))
    buf = bytearray(2048)
    data = bytearray()
    while b"a" * 1000 not in data:  # inside file 1's data: it shrinks
        data += buf[: tar.readinto(buf)]
    os.truncate(src / "base/5/1", 5000)
    while b"b" * 1000 not in data:  # inside file 2's data: it grows
        data += buf[: tar.readinto(buf)]
    with open(src / "base/5/2", "ab") as fh:
        fh.write(b"c" * 5000)
    data += _read_all(tar, 4096)
    out = tmp_path / "out"
    out.mkdir()
    extract(iter([bytes(data)]), out)
    assert (out / "base/5/1").read_bytes() == b"a" * 5000 + bytes(15000)
    assert (out / "base/5/2").read_bytes() == b"b" * 20000
