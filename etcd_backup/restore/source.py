"""Which backup to restore, and fetching it once, verified (manifest sha256, snapshot trailer), before nodes change.

`latest` never silently falls back to an older backup: newer objects without a manifest
(an upload still running, or one that failed) are skipped and named; a newer backup
whose object fails its manifest (size or sha256) refuses the restore, naming the backup
that would be used, unless allow_older is given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from etcd_backup import pipeline
from etcd_backup.catalog import Backup
from etcd_backup.errors import BackupCorrupt, RestoreRefused
from etcd_backup.storage.base import Storage

LATEST = "latest"
UNFINISHED = "no manifest: an upload still running, or one that failed"


def usable(b: Backup) -> bool:
    """Complete backups, the old plugin's *.db.tar.gz without a manifest, and plain .db snapshots can be restored."""
    plain = b.manifest is None and b.problem is None and b.compression == "none" and not b.encrypted
    return b.complete or b.legacy or plain


@dataclass(frozen=True)
class Choice:
    """The backup to restore, the newer objects skipped on the way (key, why), and the candidates it came from."""

    backup: Backup
    skipped: tuple[tuple[str, str], ...] = ()
    wanted: str = LATEST
    candidates: tuple[Backup, ...] = dataclasses.field(default=(), repr=False)

    def describe(self) -> str:
        """One line for logs, the plan and the confirmation text."""
        text = f"backup {self.backup.key}"
        if self.skipped:
            text += "; newer objects skipped: " + "; ".join(f"{key} ({why})" for key, why in self.skipped)
        return text


def choose_backup(
    backups: Iterable[Backup], cluster_id: str, wanted: str = LATEST, allow_older: bool = False
) -> Choice:
    """The backup to restore: for 'latest' the newest complete one (else the newest usable one), or the named key."""
    ours = tuple(b for b in backups if b.cluster_id == cluster_id)
    if wanted != LATEST:
        return Choice(_named(ours, cluster_id, wanted), wanted=wanted, candidates=ours)
    pool = [b for b in ours if b.complete] or [b for b in ours if usable(b)]
    if not pool:
        raise RestoreRefused(f"no complete backup of {cluster_id} found", step="choose backup")
    chosen = max(pool, key=lambda b: (b.time, b.key))
    newer = sorted((b for b in ours if (b.time, b.key) > (chosen.time, chosen.key)), key=lambda b: (b.time, b.key))
    damaged = [b for b in newer if b.problem]
    if damaged and not allow_older:
        worst = damaged[-1]
        raise RestoreRefused(
            f"the newest backup {worst.key} is damaged: {worst.problem}; the newest good one is {chosen.key}. "
            "Pass allow_older=True to restore it, or name a backup",
            step="choose backup",
        )
    skipped = tuple((b.key, b.problem or (UNFINISHED if not b.legacy else "no manifest (old format)")) for b in newer)
    return Choice(chosen, tuple(reversed(skipped)), LATEST, ours)


def _named(ours: tuple[Backup, ...], cluster_id: str, wanted: str) -> Backup:
    found = next((b for b in ours if b.key == wanted), None)
    if found is None:
        raise RestoreRefused(f"{wanted} is not a backup of {cluster_id} in this storage", step="choose backup")
    if found.problem:
        raise RestoreRefused(f"{wanted} is damaged: {found.problem}; choose another backup", step="choose backup")
    if not usable(found):
        raise RestoreRefused(f"{wanted} has {UNFINISHED}; choose another backup", step="choose backup")
    if found.manifest is not None and found.manifest.cluster != cluster_id:
        raise BackupCorrupt(f"{wanted} is a backup of {found.manifest.cluster}, not {cluster_id}", step="choose backup")
    return found


def fetch(
    storage: Storage,
    choice: Choice,
    dest: str | Path,
    identities: Iterable[str | bytes] = (),
    allow_older: bool = False,
) -> tuple[pipeline.VerifyResult, Choice]:
    """Fetch the chosen backup verified to dest; for 'latest', a backup failing its sha256 is refused or skipped.

    Returns the snapshot and the choice actually restored (with the failed one among the skipped).
    """
    ids = list(identities)
    while True:
        try:
            return pipeline.fetch_snapshot(storage, choice.backup, dest, ids), choice
        except BackupCorrupt as exc:
            if choice.wanted != LATEST or choice.backup.manifest is None:
                raise
            failed = dataclasses.replace(choice.backup, complete=False, problem=f"it fails verification: {exc.message}")
            candidates = [failed if b.key == failed.key else b for b in choice.candidates]
            if not any(usable(b) for b in candidates):
                raise  # nothing older to name: the damaged backup is the answer
            choice = choose_backup(candidates, failed.cluster_id, LATEST, allow_older)
