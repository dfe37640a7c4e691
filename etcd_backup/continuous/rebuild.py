"""Rebuild the snapshot of a past revision: full backup -> scratch etcd -> replay the segments -> check -> snapshot.

The full backup is fetched verified (sha256, trailer) and restored into a scratch etcd (etcd_backup.scratch),
checked against the certificate its manifest records (etcd's HashKV and key count at its revision), then the
segments are replayed up to the target. The result is checked (revision exactly the target, Kubernetes
prefixes present), its certificate taken at the target revision, and the scratch etcd is snapshotted into a
file whose sha256 trailer and `snapshot status` revision are checked. Leases are kept alive from the start of
the replay until the snapshot is written, so no lease expires in between and moves the revision on.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from etcd_backup import etcd, pipeline
from etcd_backup.catalog import Manifest
from etcd_backup.certificate import Certificate, check_prefixes, compare, restored_certificate
from etcd_backup.continuous.chain import RestorePoint
from etcd_backup.continuous.errors import ReplayMismatch
from etcd_backup.continuous.leases import LeaseKeeper
from etcd_backup.continuous.replay import Progress, ReplayResult, replay
from etcd_backup.errors import BackupCorrupt, EtcdUnavailable
from etcd_backup.scratch import ScratchEtcd, snapshot_revision
from etcd_backup.snapshot import SnapshotCheck
from etcd_backup.storage.base import Storage

MAX_TXN_OPS = 100_000  # one source revision is one transaction: a lease expiring can delete thousands of keys
MAX_REQUEST_BYTES = 64 << 20  # ... and a transaction of the source may be as large as its own limit allows
REPLAY_FLAGS = (f"--max-txn-ops={MAX_TXN_OPS}", f"--max-request-bytes={MAX_REQUEST_BYTES}")
_STEP = "rebuild snapshot"


@dataclass(frozen=True)
class Rebuilt:
    """A snapshot file holding exactly the target revision, with what it was built from and its certificate."""

    point: RestorePoint
    snapshot: pipeline.VerifyResult  # the file written; its manifest records revision, key count and certificate
    replay: ReplayResult
    base_revision: int  # the full snapshot's own revision (`snapshot status`)
    received: datetime | None  # when the follower received the target revision; a backup's time without segments
    certificate: Certificate

    @property
    def revision(self) -> int:
        """The revision the snapshot holds (the target)."""
        return self.point.target_revision

    def describe(self) -> str:
        """One line: the revision and time reached, and from what."""
        when = f" (received {self.received.isoformat()})" if self.received else ""
        segments = self.point.segments
        span = f": {segments[0].key} .. {segments[-1].key}" if segments else ""
        return (
            f"revision {self.revision}{when}, rebuilt from full backup {self.point.backup.key} "
            f"(revision {self.base_revision}) and {len(segments)} segment(s){span}; "
            f"{self.certificate.key_count} keys"
        )


def rebuild(
    storage: Storage,
    point: RestorePoint,
    dest: str | Path,
    *,
    identities: Iterable[str | bytes] = (),
    workdir: str | Path | None = None,
    etcd_dir: str | Path | None = None,
    lease_ttl: int = 3600,
    on_progress: Progress | None = None,
) -> Rebuilt:
    """Write to dest the snapshot of the cluster at point.target_revision, checked; see the module docstring."""
    dest = Path(dest)
    base = dest.with_name(dest.name + ".base")
    ids = list(identities)
    try:
        fetched = pipeline.fetch_snapshot(storage, point.backup, base, ids)
        scratch = ScratchEtcd(
            base, etcd_dir=etcd_dir, workdir=workdir or dest.parent, flags=REPLAY_FLAGS, no_fsync=True
        )
        with scratch:
            base.unlink()  # restored into the scratch data dir: free its disk now
            _check_base(point, scratch, fetched)
            keeper = LeaseKeeper(scratch.access, scratch.endpoint)
            try:
                result = replay(
                    scratch.access, storage, point.segments, base_revision=scratch.revision,
                    to_revision=point.target_revision, identities=ids, lease_ttl=lease_ttl,
                    max_txn_ops=MAX_TXN_OPS, on_progress=on_progress, keeper=keeper,
                )  # fmt: skip
                certificate = _check_result(scratch, point.target_revision)
                check = _save(scratch, dest)
            finally:
                keeper.close()
    finally:
        base.unlink(missing_ok=True)
    _check_file(scratch, dest, point.target_revision)
    received = result.received or (point.backup.manifest.created if point.backup.manifest else None)
    return Rebuilt(
        point, _described(point, fetched, check, certificate), result, scratch.revision, received, certificate
    )


def _check_base(point: RestorePoint, scratch: ScratchEtcd, fetched: pipeline.VerifyResult) -> None:
    """The restored full backup holds a revision its manifest allows, and matches its certificate there."""
    where = point.backup.key
    if not point.base_low <= scratch.revision <= point.base_high:
        raise BackupCorrupt(
            f"the snapshot holds revision {scratch.revision}, its manifest says {point.base_low}..{point.base_high}",
            step=_STEP,
            node=where,
        )
    expected = fetched.manifest.certificate if fetched.manifest else None
    at = expected.point(scratch.revision) if expected else None
    if expected is None or at is None:
        return  # no certificate recorded for that revision: the sha256 checks of the fetch stand alone
    found = restored_certificate(scratch.access, scratch.endpoint, scratch.revision, at.compact_revision)
    differences = compare(expected, found)
    if differences:
        raise BackupCorrupt(
            "restored full backup differs from its source: " + "; ".join(differences), step=_STEP, node=where
        )


def _check_result(scratch: ScratchEtcd, revision: int) -> Certificate:
    """The replayed copy's certificate at the target; refuse when Kubernetes prefixes are missing there."""
    try:
        certificate = restored_certificate(scratch.access, scratch.endpoint, revision)
        missing = check_prefixes(scratch.access, scratch.endpoint, revision)
    except EtcdUnavailable as exc:
        raise EtcdUnavailable(f"{exc.message}; its log ends:\n{scratch.log_tail()}", step=_STEP) from None
    if missing:
        raise BackupCorrupt("the replayed copy lacks " + "; ".join(missing), step=_STEP)
    return certificate


def _save(scratch: ScratchEtcd, dest: Path) -> SnapshotCheck:
    """Stream the scratch etcd's snapshot into dest (via dest.tmp), its sha256 trailer checked."""
    tmp = dest.with_name(dest.name + ".tmp")
    check = SnapshotCheck(str(dest))
    try:
        with etcd.SnapshotStream(scratch.access, scratch.endpoint) as stream, open(tmp, "wb") as sink:
            for chunk in stream:
                check.update(chunk)
                sink.write(chunk)
            sink.flush()
            os.fsync(sink.fileno())
        check.finish(step=_STEP)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return check


def _check_file(scratch: ScratchEtcd, dest: Path, revision: int) -> None:
    found, why = snapshot_revision(scratch.tools.restore_tool, dest)
    if found != revision:
        message = f"the snapshot written holds revision {found}, not {revision}" if found else why
        raise ReplayMismatch(message, step=_STEP, node=str(dest))


def _described(
    point: RestorePoint, fetched: pipeline.VerifyResult, check: SnapshotCheck, certificate: Certificate
) -> pipeline.VerifyResult:
    """The rebuilt file as the restore planner sees a verified backup: raw, at the target revision."""
    base = fetched.manifest
    manifest = Manifest(
        cluster=base.cluster if base else point.backup.cluster_id,
        key=point.backup.key,
        size=check.size,
        sha256=check.sha256,
        raw_size=check.size,
        raw_sha256=check.sha256,
        revision=point.target_revision,
        revision_exact=True,
        revision_low=point.target_revision,
        etcd_cluster_id=base.etcd_cluster_id if base else "",
        key_count=certificate.key_count,
        etcd_version=base.etcd_version if base else certificate.etcd_version,
        source_member="point-in-time replay",
        source_endpoint=certificate.member,
        created=datetime.now(UTC),
        compression="none",
        certificate=certificate,
    )
    return pipeline.VerifyResult(point.backup.key, check.size, check.sha256, check.size, check.sha256, manifest)


def check_restored(access: etcd.EtcdAccess, rebuilt: Rebuilt) -> list[str]:
    """Differences between the restored cluster at the target revision and the rebuilt copy (etcd HashKV, keys)."""
    endpoint = etcd.pick_sources(access)[0]
    found = restored_certificate(access, endpoint, rebuilt.revision)
    return compare(rebuilt.certificate, found)
