"""The continuous coverage report of etcd-list-backups: which revisions and times a restore reaches, and every gap."""

from __future__ import annotations

from datetime import datetime

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from etcd_backup.continuous.catalog import Catalog
from etcd_backup.continuous.coverage import Coverage, Reach
from etcd_backup.continuous.errors import SegmentCorrupt
from tasks.artifacts import artifact_key


def coverage_report(cluster_id: str, found: Coverage, catalog: Catalog) -> list[str]:
    """Log and publish (markdown artifact) the reachable revisions per etcd cluster and the gaps; the lines."""
    logger = get_run_logger()
    lines = [f"# Point-in-time coverage of {cluster_id}", ""]
    if not found.reachable and not catalog.listing.complete:
        lines.append("No continuous backup segments: restores reach the full backups' revisions only.")
    for reach in found.reachable:
        line = f"etcd cluster {reach.lineage}: revisions {reach.first}..{reach.last} ({_times(reach, catalog)})"
        lines.append(f"- {line}, from full backup `{reach.backup}`")
        logger.info("reachable: %s", line)
    for gap in found.gaps:
        lines.append(f"- **gap** in etcd cluster {gap.lineage}: {gap}")
        logger.warning("gap: %s", gap)
    notes = [
        (found.incomplete, "segment(s) without manifest (an upload in progress, or one that failed)"),
        (found.before_oldest_backup, "segment(s) older than the oldest full backup (pruned with it)"),
        (found.unanchored, "segment(s) of an etcd cluster without any full backup (unusable)"),
    ]
    lines += [f"- {len(keys)} {what}" for keys, what in notes if keys]
    create_markdown_artifact(
        "\n".join(lines),
        key=artifact_key("coverage", cluster_id),
        description=f"Point-in-time coverage of {cluster_id}",
    )
    return lines


def _times(reach: Reach, catalog: Catalog) -> str:
    """'<start> to <end> UTC' of a reachable interval: the backup's time, the last segment's receive time."""
    backup = next((b for b in catalog.backups if b.key == reach.backup), None)
    start = backup.manifest.created if backup and backup.manifest else None
    end: datetime | None = start
    last = [s for s in catalog.listing.complete if s.lineage == reach.lineage and s.last_revision == reach.last]
    if last:
        try:
            end = catalog.manifest(last[0]).last_received
        except SegmentCorrupt:
            end = None
    return f"{_when(start)} to {_when(end)} UTC"


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "?"
