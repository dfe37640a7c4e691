"""Counting and hashing the bytes a stream yields."""

from __future__ import annotations

import hashlib

from etcd_backup.storage.base import Readable


class HashingReader:
    """Read from source while counting bytes and computing their sha256."""

    def __init__(self, source: Readable):
        self.source = source
        self.size = 0
        self._hash = hashlib.sha256()

    def readable(self) -> bool:
        """Always True."""
        return True

    def read(self, size: int = -1) -> bytes:
        """Read, hash and count."""
        data = self.source.read(size)
        self._hash.update(data)
        self.size += len(data)
        return data

    def readinto(self, target) -> int:
        """Read into a writable buffer."""
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)

    @property
    def sha256(self) -> str:
        """Hex sha256 of everything read."""
        return self._hash.hexdigest()
