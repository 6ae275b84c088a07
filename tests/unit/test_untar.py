"""The streaming tar extractor used by PostgreSQL restores (pure logic, files in tmp_path)."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from drkit.dumpers.postgres.untar import extract
from drkit.errors import DrkitError, IntegrityError


def _tar(entries: list[tuple[str, str, bytes | str]], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for kind, name, payload in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if kind == "file":
                assert isinstance(payload, bytes)
                info.size, info.mode = len(payload), 0o600
                tar.addfile(info, io.BytesIO(payload))
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o700
                tar.addfile(info)
            elif kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, str(payload)
                tar.addfile(info)
    return buf.getvalue()


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
@pytest.mark.parametrize("chunk", [1, 511, 4096, 1 << 20])
def test_extracts_what_tarfile_extracts(tmp_path, fmt, chunk):
    long = "base/16384/" + "x" * (150 if fmt != tarfile.USTAR_FORMAT else 90)
    payload = os.urandom(70_000)
    data = _tar([("dir", "base", b""), ("dir", "base/16384", b""), ("file", "base/16384/1259", payload),
                 ("file", long, b"long name"), ("file", "empty", b""), ("link", "pg_wal_link", "base")], fmt)
    n = extract(iter(_chunks(data, chunk)), tmp_path)
    assert n == 6
    assert (tmp_path / "base/16384/1259").read_bytes() == payload
    assert (tmp_path / long).read_bytes() == b"long name"
    assert (tmp_path / "empty").read_bytes() == b""
    assert os.readlink(tmp_path / "pg_wal_link") == "base"
    assert (tmp_path / "base/16384/1259").stat().st_mode & 0o777 == 0o600
    assert int((tmp_path / "base/16384/1259").stat().st_mtime) == 1_700_000_000


@pytest.mark.parametrize("entry", [("file", "../escape", b"x"), ("file", "/etc/evil", b"x"),
                                   ("link", "evil", "/etc"), ("link", "evil2", "../../x")])
def test_refuses_entries_that_escape(tmp_path, entry):
    with pytest.raises(DrkitError):
        extract(iter([_tar([entry])]), tmp_path / "t")
    assert not (tmp_path / "escape").exists()


def test_detects_corrupt_header_and_truncation(tmp_path):
    data = bytearray(_tar([("file", "a", b"hello" * 100)]))
    bad = bytes(data[:10]) + b"Z" + bytes(data[11:])
    with pytest.raises(IntegrityError):
        extract(iter([bad]), tmp_path / "1")
    with pytest.raises(IntegrityError):
        extract(iter([bytes(data[:700])]), tmp_path / "2")
    with pytest.raises(IntegrityError):
        extract(iter([bytes(data[:512 * 2])]), tmp_path / "3")
