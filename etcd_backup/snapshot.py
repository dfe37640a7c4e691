"""The sha256 trailer etcd appends to a streamed snapshot, checked while the bytes go by."""

from __future__ import annotations

import hashlib

from etcd_backup.errors import BackupCorrupt

TRAILER = 32  # bytes of sha256 etcd appends to a snapshot it streams


class SnapshotCheck:
    """Feed a snapshot's bytes in order; `finish` checks the sha256 trailer, memory stays at 32 bytes."""

    def __init__(self, where: str = ""):
        self.where = where
        self.size = 0
        self._body = hashlib.sha256()  # everything but the last 32 bytes seen so far
        self._tail = b""

    def update(self, chunk: bytes) -> None:
        """Account for the next chunk of the snapshot."""
        self.size += len(chunk)
        if len(chunk) >= TRAILER:
            self._body.update(self._tail)
            self._body.update(memoryview(chunk)[:-TRAILER])
            self._tail = bytes(chunk[-TRAILER:])
        else:
            data = self._tail + bytes(chunk)
            self._body.update(data[:-TRAILER] if len(data) > TRAILER else b"")
            self._tail = data[-TRAILER:]

    @property
    def sha256(self) -> str:
        """Hex sha256 of every byte fed so far (trailer included)."""
        whole = self._body.copy()
        whole.update(self._tail)
        return whole.hexdigest()

    def finish(self, *, step: str = "check snapshot") -> str:
        """Raise BackupCorrupt unless size % 512 == 32 and the trailer is the sha256 of the rest; return sha256."""
        if self.size < 512 + TRAILER or self.size % 512 != TRAILER:
            raise BackupCorrupt(
                f"snapshot of {self.size} bytes has no sha256 trailer (size % 512 != 32)",
                step=step,
                node=self.where or None,
            )
        if self._body.digest() != self._tail:
            raise BackupCorrupt(
                "snapshot sha256 trailer does not match its content", step=step, node=self.where or None
            )
        return self.sha256
