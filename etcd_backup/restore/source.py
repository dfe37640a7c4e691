"""Which backup to restore, and fetching it once, verified (manifest sha256, snapshot trailer), before nodes change."""

from __future__ import annotations

from etcd_backup.catalog import Backup
from etcd_backup.errors import BackupCorrupt, RestoreRefused

LATEST = "latest"


def usable(b: Backup) -> bool:
    """Complete backups, the old plugin's *.db.tar.gz without a manifest, and plain .db snapshots can be restored."""
    return b.complete or b.legacy or (b.manifest is None and b.compression == "none" and not b.encrypted)


def choose_backup(backups: list[Backup], cluster_id: str, wanted: str = LATEST) -> Backup:
    """The backup to restore: the newest complete one (or, when none is complete, the newest legacy one), or a key."""
    ours = [b for b in backups if b.cluster_id == cluster_id]
    if wanted == LATEST:
        complete = [b for b in ours if b.complete]
        pool = complete or [b for b in ours if usable(b)]
        if not pool:
            raise RestoreRefused(f"no complete backup of {cluster_id} found", step="choose backup")
        return max(pool, key=lambda b: (b.time, b.key))
    found = next((b for b in ours if b.key == wanted), None)
    if found is None:
        raise RestoreRefused(f"{wanted} is not a backup of {cluster_id} in this storage", step="choose backup")
    if not usable(found):
        raise RestoreRefused(f"{wanted} is incomplete (no valid manifest); choose another backup", step="choose backup")
    if found.manifest is not None and found.manifest.cluster != cluster_id:
        raise BackupCorrupt(f"{wanted} is a backup of {found.manifest.cluster}, not {cluster_id}", step="choose backup")
    return found
