"""restore_to_dir over a real (memory-backed) repository: what it checks when it skips the input CRC."""

from __future__ import annotations

import io
import os
import struct

import pytest

from drkit.config import Secret
from drkit.dumpers.redis.rdb import RdbError, crc64, rewrite
from drkit.dumpers.redis.restore import restore_to_dir
from drkit.errors import IntegrityError
from drkit.repository import Manifest, Repository
from drkit.repository.keys import SecretWrapper
from drkit.repository.manifest import iso, new_backup_id, utcnow
from drkit.storage.memory import MemoryStorage

AT = 1_700_000_000_000


def _rdb(n: int) -> bytes:
    body = b"REDIS0010\xfe\x00"
    for i in range(n):
        k = b"k%d" % i
        v = os.urandom(3000)
        prefix = b"\xfc" + struct.pack("<Q", AT + (-1 if i % 5 == 0 else 60_000)) if i % 3 == 0 else b""
        body += prefix + b"\x00" + bytes([len(k)]) + k + b"\x80" + len(v).to_bytes(4, "big") + v
    body += b"\xff"
    return body + crc64(body).to_bytes(8, "little")


@pytest.fixture
def repo():
    name = os.urandom(4).hex()
    yield Repository.init(MemoryStorage(name), SecretWrapper(Secret("test key material"), "k", "key_env"))
    MemoryStorage.reset(name)


def _backup(repo: Repository, data: bytes, **metadata: object) -> Manifest:
    session = repo.session()
    ref = session.write_stream("dump.rdb", io.BytesIO(data))
    session.finish()
    now = iso(utcnow())
    m = Manifest(new_backup_id(), "cache", "redis", "full", now, now, [ref], metadata=dict(metadata))
    repo.commit_manifest(m)
    return m


def test_restore_to_dir_writes_the_rewrite_and_checks_the_recorded_crc(repo, tmp_path):
    data = _rdb(3000)  # ~9 MB: several chunks
    want = io.BytesIO()
    stats = rewrite(io.BytesIO(data), want, at_ms=AT, now_ms=AT + 5000)
    assert stats.keys_expired == 200 and stats.crc_in == int.from_bytes(data[-8:], "little")

    good = _backup(repo, data, rdb_crc64=data[-8:][::-1].hex())
    out = restore_to_dir(repo, good, tmp_path, drop_before_ms=AT, shift_ms=5000)
    assert (tmp_path / "dump.rdb").read_bytes() == want.getvalue()
    assert out["keys"] == 2800 and out["keys_expired_by_then"] == 200

    # The manifest's record and the stored trailer disagree: refused, not silently restored.
    wrong = _backup(repo, data, rdb_crc64="00000000deadbeef")
    (tmp_path / "x").mkdir()
    with pytest.raises(IntegrityError, match="deadbeef"):
        restore_to_dir(repo, wrong, tmp_path / "x", drop_before_ms=AT, shift_ms=5000)

    # No record (an older backup): the input CRC is checked, and a bad one is found.
    bad = _backup(repo, data[:-8] + bytes(8 * [0x5A]))
    (tmp_path / "y").mkdir()
    with pytest.raises(RdbError, match="checksum mismatch"):
        restore_to_dir(repo, bad, tmp_path / "y", drop_before_ms=AT, shift_ms=5000)


@pytest.mark.parametrize("sync", [True, False])
def test_restore_to_dir_fsyncs_file_and_directories_only_when_asked(repo, tmp_path, monkeypatch, sync):
    data = _rdb(300)
    m = _backup(repo, data, rdb_crc64=data[-8:][::-1].hex())
    target = tmp_path / "t"
    target.mkdir()
    synced: list[str] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd))[1])
    restore_to_dir(repo, m, target, drop_before_ms=AT, shift_ms=0, sync=sync)
    assert (target / "dump.rdb").stat().st_size > 0
    if sync:  # the file (under its temporary name), then its directory, then the directory's entry
        assert synced == [str(target / "dump.rdb.drkit-partial"), str(target), str(tmp_path)]
    else:
        assert synced == []


def test_no_sync_on_the_command_line_reaches_the_restore(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from drkit import ops
    from drkit.cli.main import _register_plugins, cli
    from drkit.dumpers import RestoreResult

    key = tmp_path / "key"
    key.write_text(os.urandom(32).hex())
    cfg = tmp_path / "drkit.yaml"
    cfg.write_text(f"repository:\n  url: file://{tmp_path / 'repo'}\nencryption:\n  key_file: {key}\n"
                   "sources:\n  cache:\n    type: redis\n    url: redis://127.0.0.1:1\n")
    seen = []

    def fake_restore(config, request):
        seen.append(request.sync)
        return RestoreResult("cache", "b", request.target_dir, None, {"download": 0.0}, {})

    monkeypatch.setattr(ops, "restore", fake_restore)
    _register_plugins()
    for extra, want in (([], True), (["--no-sync"], False)):
        res = CliRunner().invoke(cli, ["--config", str(cfg), "restore", "cache", "--target-dir",
                                       str(tmp_path / "t"), *extra])
        assert res.exit_code == 0, res.output
        assert seen[-1] is want
