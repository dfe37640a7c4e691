"""`etcdutl snapshot status` for tests: the revision and key count etcd itself reads from a snapshot file."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from etcd_backup.snapshot import SnapshotCheck


@dataclass(frozen=True)
class SnapshotStatus:
    """What `etcdutl snapshot status` reports: hash, revision, bbolt key count, size."""

    hash: int
    revision: int
    total_key: int
    total_size: int


def inspect_db(path: str | Path, tool: str | Path) -> SnapshotStatus:
    """Run `etcdutl snapshot status -w json` (or etcdctl's, for 3.4) on a snapshot file."""
    env = {**os.environ, "ETCDCTL_API": "3"}
    done = subprocess.run(
        [str(tool), "snapshot", "status", "-w", "json", str(path)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, f"snapshot status of {path} failed: {done.stderr.strip()[-300:]}"
    data = json.loads(done.stdout)
    return SnapshotStatus(
        hash=data["hash"], revision=data["revision"], total_key=data["totalKey"], total_size=data["totalSize"]
    )


def check_file(path: str | Path) -> str:
    """Check a snapshot file's sha256 trailer and return its sha256 (BackupCorrupt when wrong)."""
    check = SnapshotCheck(str(path))
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            check.update(chunk)
    return check.finish()
