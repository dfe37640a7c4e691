"""Facts about etcd snapshot files: the sha256 trailer checked while streaming, and `snapshot status`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from etcd_backup.errors import BackupCorrupt, ConfigError

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


def check_file(path: str | Path) -> str:
    """Check a snapshot file's trailer and return its sha256 (BackupCorrupt when wrong)."""
    check = SnapshotCheck(str(path))
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            check.update(chunk)
    return check.finish()


@dataclass(frozen=True)
class SnapshotStatus:
    """What `etcdutl snapshot status` reports: hash, revision, bbolt key count, size."""

    hash: int
    revision: int
    total_key: int
    total_size: int


def find_status_tool() -> list[str]:
    """The command that prints `snapshot status` here: etcdutl (3.5+) or etcdctl (3.3/3.4)."""
    for name in ("etcdutl", "etcdctl"):
        env_path = os.environ.get(f"ETCD_BACKUP_{name.upper()}")
        path = env_path or shutil.which(name)
        if path:
            return [path]
    raise ConfigError("neither etcdutl nor etcdctl found on PATH", step="snapshot status")


def inspect_db(path: str | Path, tool: str | Path | None = None) -> SnapshotStatus:
    """Run `etcdutl snapshot status -w json` (or etcdctl's, for 3.4) on a snapshot file."""
    command = [str(tool)] if tool else find_status_tool()
    env = {**os.environ, "ETCDCTL_API": "3"}
    done = subprocess.run(
        [*command, "snapshot", "status", "-w", "json", str(path)], capture_output=True, text=True, env=env, timeout=600
    )
    if done.returncode != 0:
        raise BackupCorrupt(
            f"snapshot status failed: {done.stderr.strip()[-300:]}", step="snapshot status", node=str(path)
        )
    data = json.loads(done.stdout)
    return SnapshotStatus(
        hash=data["hash"], revision=data["revision"], total_key=data["totalKey"], total_size=data["totalSize"]
    )
