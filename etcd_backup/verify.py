"""Prove a snapshot file restores into a working etcd that holds what the source held (no Prefect here)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel

from etcd_backup.certificate import (
    HASH_KIND,
    Certificate,
    check_prefixes,
    compare,
    kubernetes_prefixes,
    restored_certificate,
)
from etcd_backup.errors import BackupCorrupt, EtcdUnavailable
from etcd_backup.scratch import ScratchEtcd


class VerifyReport(BaseModel):
    """What verifying one snapshot found: the scratch etcd's version, what the restored copy holds, differences."""

    ok: bool
    etcd_version: str
    revision: int = 0
    key_count: int = 0
    hash: int = 0
    hash_kind: str = HASH_KIND
    compact_revision: int = 0
    prefixes: list[str] = []
    compared: bool = True  # false when there was no certificate to compare with (restore and start only)
    seconds: float
    differences: list[str] = []

    def summary(self) -> str:
        """One line for logs and notifications."""
        if self.ok:
            what = "matches its certificate" if self.compared else "restores and serves (no certificate to compare)"
            return (
                f"snapshot {what}: revision {self.revision}, {self.key_count} keys, "
                f"HashKV {self.hash:#010x}, etcd {self.etcd_version}, {self.seconds:.1f} s"
            )
        return "snapshot failed verification: " + "; ".join(self.differences)

    def raise_if_failed(self) -> None:
        """Raise BackupCorrupt naming the differences when verification failed."""
        if not self.ok:
            raise BackupCorrupt(self.summary(), step="verify restorable")


def verify_restorable(
    snapshot_path: str | Path,
    expected: Certificate | None,
    prefixes: Iterable[str] | None = None,
    etcd_dir: str | Path | None = None,
    workdir: str | Path | None = None,
) -> VerifyReport:
    """Restore snapshot_path into a scratch etcd, compare it with expected, check key prefixes, clean up.

    A snapshot that does not restore, does not start or differs gives ok=False with the reason in `differences`;
    problems of this machine (no etcd binary, no disk space) raise. prefixes None: /registry/namespaces/ when the
    data looks like Kubernetes; [] checks none. etcd_dir and workdir: see ScratchEtcd.
    """
    started = time.monotonic()
    scratch = ScratchEtcd(snapshot_path, etcd_dir=etcd_dir, workdir=workdir)
    report = VerifyReport(ok=False, etcd_version=scratch.version, compared=expected is not None, seconds=0)
    try:
        with scratch:
            _inspect(scratch, expected, prefixes, report)
    except BackupCorrupt as exc:
        report.differences.append(str(exc))
    report.ok = not report.differences
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _inspect(
    scratch: ScratchEtcd, expected: Certificate | None, prefixes: Iterable[str] | None, report: VerifyReport
) -> None:
    """Fill report from a started scratch etcd: the restored copy's certificate, differences, prefixes."""
    if scratch.served_revision < scratch.revision:
        report.differences.append(
            f"the restored etcd serves revision {scratch.served_revision}, but the snapshot holds data up to revision "
            f"{scratch.revision}: part of the data did not load"
        )
        return
    point = expected.point(scratch.revision) if expected else None
    try:
        found = restored_certificate(
            scratch.access, scratch.endpoint, scratch.revision, point.compact_revision if point else None
        )
        at = found.revision
        wanted = kubernetes_prefixes(scratch.access, scratch.endpoint, at) if prefixes is None else [*prefixes]
        missing = check_prefixes(scratch.access, scratch.endpoint, at, wanted)
    except EtcdUnavailable as exc:
        report.differences.append(
            f"the restored etcd failed while reading its data: {exc}; its log ends:\n{scratch.log_tail()}"
        )
        return
    report.revision, report.key_count, report.hash = found.revision, found.key_count, found.hash
    report.hash_kind, report.compact_revision, report.prefixes = found.hash_kind, found.compact_revision, wanted
    report.differences += (compare(expected, found) if expected else []) + missing
