"""An in-memory Storage for unit tests of the layers above storage."""

from __future__ import annotations

import io
import shutil
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from etcd_backup.errors import NotFound
from etcd_backup.storage.base import Closing, ObjectInfo, Readable, ReadStream
from etcd_backup.storage.names import check_key


class MemoryStorage(Closing):
    """Objects kept in a dict (whole objects in memory: tests only)."""

    kind = "memory"

    def __init__(self, name: str = "memory"):
        self.name = name
        self.objects: dict[str, tuple[bytes, datetime]] = {}
        self._lock = threading.Lock()

    def describe(self) -> str:
        """'memory://<name>'."""
        return f"memory://{self.name}"

    def put(self, key: str, source: Readable) -> ObjectInfo:
        """Read source completely, then store it (so a failed read stores nothing)."""
        buffer = io.BytesIO()
        shutil.copyfileobj(source, buffer)
        data = buffer.getvalue()
        with self._lock:
            self.objects[check_key(key)] = (data, datetime.now(UTC))
        return self.stat(key)

    def open(self, key: str) -> ReadStream:
        """A BytesIO over key's content, or NotFound."""
        return io.BytesIO(self._get(key)[0])

    def stat(self, key: str) -> ObjectInfo:
        """Size and time of key, or NotFound."""
        data, modified = self._get(key)
        return ObjectInfo(key, len(data), modified)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects under prefix, sorted by key."""
        with self._lock:
            items = sorted((k, v) for k, v in self.objects.items() if k.startswith(prefix))
        for key, (data, modified) in items:
            yield ObjectInfo(key, len(data), modified)

    def delete(self, keys: Iterable[str]) -> None:
        """Remove keys; missing ones are ignored."""
        with self._lock:
            for key in keys:
                self.objects.pop(key, None)

    def _get(self, key: str) -> tuple[bytes, datetime]:
        with self._lock:
            try:
                return self.objects[check_key(key)]
            except KeyError:
                raise NotFound(f"{self.describe()}: {key} does not exist", step="memory open") from None
