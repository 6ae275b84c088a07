"""Local-directory storage (``file:///path``), the embedded default.

Objects are files under the root.  A put writes a temporary file in the same directory, fsyncs
it, then publishes it with ``link`` (exclusive: fails if the name exists) or ``rename``
(replace), and fsyncs the directory -- so a reader never sees a partial object and a crash
leaves at most a ``.tmp-*`` file, which is never listed.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from drkit.errors import AlreadyExistsError, NotFoundError, StorageError
from drkit.storage.base import Capabilities, ObjectInfo, Storage

_TMP = ".tmp-"


class LocalStorage(Storage):
    capabilities = Capabilities(conditional_create=True, server_time=False)

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.url = f"file://{self.root}"
        # When root writes into a repository owned by another user (e.g. backups run as root,
        # WAL archived by the postgres user), new files and directories take the repository
        # owner, so both keep being able to write.
        self._owner: tuple[int, int] | None = None
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            try:
                st = self.root.stat()
            except OSError:
                st = None
            if st is not None and st.st_uid != 0:
                self._owner = (st.st_uid, st.st_gid)

    def _mkdirs(self, path: Path) -> None:
        missing = []
        p = path
        while not p.exists() and p != self.root and p != p.parent:
            missing.append(p)
            p = p.parent
        path.mkdir(parents=True, exist_ok=True)
        for d in reversed(missing):
            if self._owner:
                try:
                    os.chown(d, *self._owner)
                except OSError:
                    pass
            _fsync_dir(d.parent)  # make the new directory entry itself durable

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"invalid object key: {key!r}")
        return self.root / key

    def put(self, key: str, data: bytes, *, exclusive: bool = True) -> None:
        path = self._path(key)
        try:
            self._mkdirs(path.parent)
            tmp = path.parent / f"{_TMP}{uuid.uuid4().hex}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                if self._owner:
                    os.fchown(fd, *self._owner)
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                if exclusive:
                    try:
                        os.link(tmp, path)
                    except FileExistsError:
                        if path.read_bytes() == bytes(data):
                            return
                        raise AlreadyExistsError(f"object already exists: {key}") from None
                else:
                    os.replace(tmp, path)
            finally:
                if tmp.exists():
                    tmp.unlink()
            _fsync_dir(path.parent)
        except AlreadyExistsError:
            raise
        except OSError as exc:
            raise StorageError(f"cannot write {key} under {self.root}: {exc.strerror}") from exc

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as fh:
                if offset:
                    fh.seek(offset)
                data = fh.read() if length is None else fh.read(length)
        except FileNotFoundError:
            raise NotFoundError(f"object not found: {key}") from None
        except OSError as exc:
            raise StorageError(f"cannot read {key} under {self.root}: {exc.strerror}") from exc
        if length is not None and len(data) != length:
            raise StorageError(
                f"short read of {key}: wanted {length} bytes at {offset}, got {len(data)}"
            )
        return data

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot stat {key}: {exc.strerror}") from exc
        return ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self.root
        # Walk only the directory that can contain the prefix.
        start_dir = base / prefix.rsplit("/", 1)[0] if "/" in prefix else base
        if not start_dir.is_dir():
            if not base.is_dir():
                raise StorageError(f"repository directory does not exist: {base}")
            return
        try:
            for dirpath, _dirs, files in os.walk(start_dir, onerror=_raise):
                for name in files:
                    if name.startswith(_TMP):
                        continue
                    full = Path(dirpath) / name
                    key = full.relative_to(base).as_posix()
                    if not key.startswith(prefix):
                        continue
                    try:
                        st = full.stat()
                    except FileNotFoundError:
                        continue
                    yield ObjectInfo(
                        key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)
                    )
        except OSError as exc:
            raise StorageError(f"cannot list {prefix!r} under {base}: {exc}") from exc

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"cannot delete {key}: {exc.strerror}") from exc


def _raise(exc: OSError) -> None:
    if exc.errno != errno.ENOENT:
        raise exc


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
