"""Point-in-time restore, the part before any node changes: choose the full backup and segments, rebuild the snapshot.

The rebuilt snapshot then goes through the whole-cluster restore like any verified backup (flows/restore_cluster.py).
"""

from __future__ import annotations

from datetime import datetime

from blocks import AgeIdentity
from etcd_backup.continuous.rebuild import Rebuilt
from etcd_backup.errors import BackupCorrupt, ConfigError
from etcd_backup.pipeline import VerifyResult
from etcd_backup.restore.source import LATEST, Choice
from etcd_backup.storage.base import Storage
from tasks import continuous as steps


def rebuild_point(
    store: Storage,
    cluster_id: str,
    backup: str,
    to_revision: int | None,
    to_time: datetime | None,
    identity: AgeIdentity | None,
    dest: str,
) -> tuple[VerifyResult, Choice, Rebuilt]:
    """The snapshot of the cluster at the target, rebuilt into dest and checked; what the restore then sends."""
    if backup != LATEST:
        raise ConfigError(
            "a point-in-time restore chooses its full backup itself: leave backup as 'latest' with to_revision/to_time",
            step="parameters",
        )
    if to_revision is not None and to_revision < 1:
        raise ConfigError(f"to_revision must be a revision (>= 1), not {to_revision}", step="parameters")
    point = steps.plan_point_in_time(store, cluster_id, to_revision, to_time, identity)
    rebuilt = steps.rebuild_snapshot(store, point, identity, dest)
    return rebuilt.snapshot, Choice(point.backup, wanted=point.backup.key), rebuilt


def result_fields(rebuilt: Rebuilt | None) -> dict:
    """What a point-in-time run adds to the flow's result ({} for a plain restore)."""
    if rebuilt is None:
        return {}
    segments = rebuilt.point.segments
    return {
        "to_revision": rebuilt.revision,
        "time": rebuilt.received.isoformat() if rebuilt.received else None,
        "segments": len(segments),
        "first_segment": segments[0].key if segments else None,
        "last_segment": segments[-1].key if segments else None,
        "point_in_time": rebuilt.describe(),
    }


def refuse_if_different(differences: list[str], rebuilt: Rebuilt) -> None:
    """After the restore: fail the run, naming each difference, when the cluster differs from the rebuilt copy."""
    if differences:
        raise BackupCorrupt(
            f"the cluster was restored, but at revision {rebuilt.revision} it differs from the rebuilt copy: "
            + "; ".join(differences),
            step="check point in time",
        )
