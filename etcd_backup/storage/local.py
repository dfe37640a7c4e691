"""A directory on the local filesystem (dev, tests, or a mounted volume)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from etcd_backup.errors import ConfigError, NotFound, StorageError, TransientStorageError
from etcd_backup.storage.base import Closing, ObjectInfo, Readable, ReadStream
from etcd_backup.storage.names import check_key, is_temp, list_start, temp_name

CHUNK = 1024 * 1024


class LocalStorage(Closing):
    """Objects as files under directory: written to a temp name, fsynced, renamed; mode 0600."""

    kind = "local"

    def __init__(self, directory: str | os.PathLike):
        if not os.path.isabs(directory):
            raise ConfigError(
                f"local storage directory {str(directory)!r} is a relative path; give an absolute path "
                "(a relative one would depend on the directory each worker happens to start in)",
                step="local storage",
            )
        self.root = Path(directory)

    def describe(self) -> str:
        """'file:///path'."""
        return f"file://{self.root}"

    def put(self, key: str, source: Readable) -> ObjectInfo:
        """Copy source into a temp file beside key, fsync, then rename it into place."""
        path = self._path(key)
        tmp = path.with_name(temp_name(path.name))
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
                shutil.copyfileobj(source, out, CHUNK)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except BaseException as exc:
            with contextlib.suppress(OSError):  # a failing cleanup must not hide why the put failed
                tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError) and not isinstance(exc, StorageError):
                raise self._error(exc, "put", key) from None
            raise
        return self.stat(key)

    def open(self, key: str) -> ReadStream:
        """Open key for reading, or NotFound."""
        try:
            return open(self._path(key), "rb")
        except OSError as exc:
            raise self._error(exc, "open", key) from None

    def stat(self, key: str) -> ObjectInfo:
        """Size and time of key, or NotFound."""
        path = self._path(key)
        try:
            st = path.stat()
        except OSError as exc:
            raise self._error(exc, "stat", key) from None
        if not path.is_file():
            raise NotFound(f"{self.describe()}: {key} is not a file", step="local stat")
        return ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Files under prefix (temp files skipped), sorted by key."""
        start = self.root / list_start(prefix)
        found = []
        for dirpath, _, filenames in os.walk(start, onerror=self._walk_error):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                key = name if rel == "." else f"{rel}/{name}"
                if not is_temp(name) and key.startswith(prefix):
                    found.append(key)
        for key in sorted(found):
            try:
                yield self.stat(key)
            except NotFound:
                continue

    def delete(self, keys: Iterable[str]) -> None:
        """Remove files; missing ones are ignored."""
        for key in keys:
            try:
                self._path(key).unlink(missing_ok=True)
            except OSError as exc:
                raise self._error(exc, "delete", key) from None

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _walk_error(self, exc: OSError) -> None:
        if exc.errno != errno.ENOENT:
            raise self._error(exc, "list", "") from None

    def _error(self, exc: OSError, op: str, key: str) -> StorageError:
        """Map an OSError: missing -> NotFound, no space/IO -> transient, else permanent; name storage, path, cause."""
        step, where = f"local {op}", f"local storage {self.describe()}"
        if exc.errno == errno.ENOENT and op in ("open", "stat"):
            return NotFound(f"{where}: {key} does not exist", step=step)
        cause = f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc.strerror)
        if exc.errno == errno.ENOTDIR:
            cause += " (a file stands where a directory of the storage should be)"
        if exc.errno in (errno.EIO, errno.EAGAIN):
            return TransientStorageError(f"{where}: {op} of {key} failed: {cause}", step=step)
        return StorageError(f"{where}: {op} of {key or 'the directory'} failed: {cause}", step=step)


def _fsync_dir(path: Path) -> None:
    """Make a rename durable by syncing its directory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
