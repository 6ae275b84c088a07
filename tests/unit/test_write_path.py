"""The write path's self-check and the node-local data directory stream (no servers)."""

from __future__ import annotations

import os
import struct
import time
import types
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


def test_self_check_catches_a_chunk_that_changed_between_hash_and_compression(keys, monkeypatch):
    """The buffer changes after its id was taken (a memory fault, or a caller reusing it): the
    compressed bytes and the buffer still agree, but not with the id -- so the self-check hashes."""
    real = blobs._compressor(3)

    class Mutating:
        def compress(self, data):
            data[100] ^= 0x01  # the caller's buffer itself
            return real.compress(data)

    monkeypatch.setattr(blobs, "_compressor", lambda level: Mutating())
    with pytest.raises(IntegrityError, match="self-check"):
        blobs.prepare(keys, bytearray(_chunk()), 3, None)


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


# ---- node-local chunking: file contents cut at file offsets, the rest content-defined ----------

def _small_cdc():
    from pyfastcdc.cy import FastCDC

    return FastCDC(4096, min_size=1024, max_size=16384, seed=12345)


def _chunked(tar, cdc, file_chunk):
    chunks = [bytes(c) for c in tar.chunks(cdc, file_chunk)]
    assert all(0 < len(c) <= max(cdc.max_size, file_chunk) for c in chunks)
    return chunks


def _datadir_with_relations(root: Path, n_small: int = 60) -> dict[str, bytes]:
    files = _fake_datadir(root)
    big = os.urandom(10 * 65536 + 5000)  # 10 full 64 KiB chunks and a 5000-byte tail
    (root / "base/5/20000").write_bytes(big)
    (root / "base/5/20001").write_bytes(os.urandom(3 * 65536))  # an exact multiple: no tail
    for i in range(n_small):  # > 2 * max_size of small files: the gap is cut as it fills up
        (root / f"base/5/{30000 + i}").write_bytes(os.urandom(700 + 37 * i))
    files["base/5/20000"] = big
    return files


def _stop_fn():
    return lambda: ("0/400100", "START WAL LOCATION: 0/200028\nSTART TIMELINE: 1\n", "")


def _tar(src):
    from drkit.dumpers.postgres.localbackup import _DataDirTar

    tar = _DataDirTar(src, SEG, SYSID, "0/200028", _stop_fn())
    return tar


def _data_offset(stream: bytes, name: str) -> int:
    """Offset of ``name``'s contents in a tar stream (ustar names fit in the header)."""
    pos = 0
    while pos < len(stream):
        hdr = stream[pos : pos + 512]
        size = int(hdr[124:136].rstrip(b"\0 ") or b"0", 8)
        if hdr[:100].rstrip(b"\0").decode() == name:
            return pos + 512
        pos += 512 + (size + 511) // 512 * 512
    raise AssertionError(f"{name} not in the stream")


def test_chunks_are_the_same_bytes_as_the_stream_and_cut_at_file_offsets(tmp_path):
    from drkit.dumpers.postgres.untar import extract

    src = tmp_path / "pgdata"
    files = _datadir_with_relations(src)
    cdc, fc = _small_cdc(), 65536
    tar = _tar(src)
    chunks = _chunked(tar, cdc, fc)
    assert tar.result is not None and tar.result.stop_lsn == "0/400100"
    stream = b"".join(chunks)
    assert stream == _read_all(_tar(src), 1 << 20)  # same stream as readinto (pg_basebackup's layout)
    out = tmp_path / "out"
    out.mkdir()
    extract(iter([stream]), out)
    assert (out / "base/5/20000").read_bytes() == files["base/5/20000"]

    bounds, pos = set(), 0
    for c in chunks:
        pos += len(c)
        bounds.add(pos)
    for name, size in (("base/5/20000", 10 * 65536 + 5000), ("base/5/20001", 3 * 65536),
                       ("pg_wal/000000010000000000000003", SEG)):
        start = _data_offset(stream, name)
        full = size - size % fc
        # A chunk ends right before the contents and at every file_chunk multiple inside them.
        assert {start + k * fc for k in range(full // fc + 1)} <= bounds, name
    # The many small files went through the content-defined chunker: no chunk over max_size,
    # and not one chunk per file.
    small = [c for c in chunks if len(c) != fc]
    assert len(small) < 60 and max(len(c) for c in small) <= cdc.max_size


def test_gap_cut_in_pieces_equals_one_cut():
    from drkit.dumpers.postgres.localbackup import _cdc_cut

    cdc = _small_cdc()
    data = os.urandom(200_000)
    whole = [bytes(c) for c in _cdc_cut(cdc, bytearray(data), final=True)]
    gap, pieces = bytearray(), []
    for i in range(0, len(data), 7_000):  # fed in pieces, cut whenever it reaches 2 * max_size
        gap += data[i : i + 7_000]
        if len(gap) >= 2 * cdc.max_size:
            pieces += [bytes(c) for c in _cdc_cut(cdc, gap, final=False)]
    pieces += [bytes(c) for c in _cdc_cut(cdc, gap, final=True)]
    assert pieces == whole and not gap


def test_one_changed_page_changes_one_file_chunk_and_growth_keeps_the_rest(tmp_path, monkeypatch):
    import drkit.dumpers.postgres.localbackup as lb

    # backup_label's tar header carries the time the backup ended; pin it, so that the only
    # difference between the streams is the page (CI once saw the second tick in between).
    clock = types.SimpleNamespace(time=lambda: 1_700_000_000.0, monotonic=time.monotonic, sleep=time.sleep)
    monkeypatch.setattr(lb, "time", clock)
    src = tmp_path / "pgdata"
    _datadir_with_relations(src)
    cdc, fc = _small_cdc(), 65536
    before = _chunked(_tar(src), cdc, fc)
    rel = src / "base/5/20000"
    mtime = rel.stat().st_mtime_ns
    with open(rel, "r+b") as fh:  # one 8 kB page in the middle of the file
        fh.seek(4 * 65536 + 8192)
        fh.write(os.urandom(8192))
    os.utime(rel, ns=(mtime, mtime))  # same header: only the contents differ
    after = _chunked(_tar(src), cdc, fc)
    assert len(after) == len(before)
    assert len(set(after) - set(before)) == 1
    with open(rel, "ab") as fh:  # the relation grows by two pages
        fh.write(os.urandom(16384))
    grown = _chunked(_tar(src), cdc, fc)
    new = set(grown) - set(after)
    # Its header (size) and its tail change the content-defined chunks around them; its full
    # chunks are all still there.
    assert 1 <= len(new) <= 8
    assert sum(len(c) for c in new) < 0.15 * sum(len(c) for c in grown)
    assert set(grown) >= {c for c in after if len(c) == fc}


def test_chunks_of_a_file_that_shrinks_while_read_are_padded(tmp_path):
    from drkit.dumpers.postgres.untar import extract

    src = tmp_path / "pgdata"
    (src / "base/5").mkdir(parents=True)
    (src / "base/5/1").write_bytes(b"a" * (4 * 65536))
    (src / "pg_wal").mkdir()
    (src / "pg_wal/000000010000000000000002").write_bytes(_segment(2))
    tar = _DataDirTarAt(src)
    gen = tar.chunks(_small_cdc(), 65536)
    data = bytearray()
    while b"a" * 65536 not in data:
        data += next(gen)
    os.truncate(src / "base/5/1", 65536 + 100)  # after its first chunk
    data += b"".join(gen)
    out = tmp_path / "out"
    out.mkdir()
    extract(iter([bytes(data)]), out)
    assert (out / "base/5/1").read_bytes() == b"a" * (65536 + 100) + bytes(3 * 65536 - 100)


def _DataDirTarAt(src):  # noqa: N802 - a constructor
    from drkit.dumpers.postgres.localbackup import _DataDirTar

    return _DataDirTar(src, SEG, SYSID, "0/200028", lambda: ("0/200100", "START TIMELINE: 1\n", ""))


def test_write_chunks_roundtrips_and_refuses_oversized_chunks(tmp_path):
    from drkit.config import Secret
    from drkit.errors import DrkitError
    from drkit.repository import Repository
    from drkit.repository.keys import SecretWrapper
    from drkit.storage.local import LocalStorage

    repo = Repository.init(LocalStorage(tmp_path / "repo"), SecretWrapper(Secret("pw pw pw pw"), "t", "key_env"))
    session = repo.session()
    parts = [bytearray(os.urandom(1000)), bytearray(b"x" * 70000), bytearray(), bytearray(b"tail")]
    ref = session.write_chunks("s", iter(parts))
    assert ref.size == 71004 and len(ref.chunks) == 3
    with pytest.raises(DrkitError, match="larger than"):
        session.write_chunks("big", iter([bytearray(session.cdc.max_size + 1)]))
    session.finish()
    assert repo.open_stream(ref).read() == b"".join(parts)


def _seal_frame(keys: Keys, frame: bytes, blob_id: bytes) -> bytes:
    return keys.seal_parts(bytes([BLOB_ZSTD]), frame, blob_aad(blob_id))


def test_new_blobs_carry_a_zstd_checksum_and_restores_trust_it_without_rehashing(keys, monkeypatch):
    import zstandard

    data = _chunk()
    prep = blobs.prepare(keys, data, 3, None)
    payload = keys.open(prep.sealed, blob_aad(bytes.fromhex(prep.id)), what="t")
    assert zstandard.get_frame_parameters(payload[1:]).has_checksum
    hashed: list[int] = []
    real_id = Keys.chunk_id
    monkeypatch.setattr(Keys, "chunk_id", lambda self, d: (hashed.append(len(d)), real_id(self, d))[1])
    assert blobs.open_chunk(keys, prep.sealed, prep.id, len(data), what="t", rehash=False) == data
    assert hashed == []  # the restore path: GCM + the frame checksum
    assert blobs.open_chunk(keys, prep.sealed, prep.id, len(data), what="t") == data
    assert hashed == [len(data)]  # verify's path rehashes


def test_a_decompression_that_misses_the_checksum_is_refused_on_the_restore_path(keys):
    import zstandard

    data = _chunk()
    blob_id = keys.chunk_id(data)
    frame = bytearray(zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data))
    frame[-1] ^= 0x10  # the output no longer matches the checksum taken at compression
    sealed = _seal_frame(keys, bytes(frame), blob_id)
    with pytest.raises(IntegrityError, match="does not decompress"):
        blobs.open_chunk(keys, sealed, blob_id.hex(), len(data), what="t", rehash=False)


def test_frames_without_a_checksum_are_always_rehashed(keys):
    import zstandard

    data = _chunk()
    wrong = bytearray(data)
    wrong[1000] ^= 1
    old_style = zstandard.ZstdCompressor(level=3, write_checksum=False).compress(bytes(wrong))
    blob_id = keys.chunk_id(data)  # sealed under the id of other bytes (a writer fault)
    sealed = _seal_frame(keys, old_style, blob_id)
    for rehash in (True, False):
        with pytest.raises(IntegrityError, match="does not match its id"):
            blobs.open_chunk(keys, sealed, blob_id.hex(), len(data), what="t", rehash=rehash)
    # A checksummed frame of other bytes under this id is what only the self-check (at backup)
    # and verify's rehash find: verify does.
    sealed = _seal_frame(keys, zstandard.ZstdCompressor(level=3, write_checksum=True).compress(bytes(wrong)), blob_id)
    with pytest.raises(IntegrityError, match="does not match its id"):
        blobs.open_chunk(keys, sealed, blob_id.hex(), len(data), what="t")
