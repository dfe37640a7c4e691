"""Readable run reports (tables and markdown artifacts) built from core records."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from etcd_backup.catalog import Backup, BackupRecord
from etcd_backup.continuous.prune import SegmentRetention
from etcd_backup.retention import RetentionPlan
from tasks.artifacts import artifact_key


def human_size(n: float) -> str:
    """Bytes as a short human string (KiB/MiB/GiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def backup_report(
    record: BackupRecord,
    plan: RetentionPlan,
    removed: list[str],
    segments: SegmentRetention | None = None,
    removed_segments: list[str] | None = None,
) -> None:
    """Table of the new backup plus what retention kept and removed."""
    row = {
        "key": record.key,
        "size": human_size(record.size),
        "ratio": f"{record.ratio:.2f}",
        "revision": record.revision,
        "keys": record.key_count,
        "etcd": record.etcd_version,
        "duration": f"{record.duration_seconds:.1f} s",
        "source member": record.source_member,
        "sha256": record.sha256[:16] + "…",
    }
    create_table_artifact(
        key=artifact_key("backup", record.cluster), table=[row], description=f"Backup of {record.cluster}"
    )
    retention_report(record.cluster, plan, removed, False, segments, removed_segments)


def _verified(backup: Backup) -> str:
    """'ok <time>' or 'FAILED <time>' from the backup's last verification, '' when never verified."""
    v = backup.verification
    if v is None:
        return ""
    return f"{'ok' if v.ok else 'FAILED'} {v.verified_at:%Y-%m-%d %H:%M}"


def retention_report(
    cluster_id: str,
    plan: RetentionPlan,
    removed: list[str],
    dry_run: bool,
    segments: SegmentRetention | None = None,
    removed_segments: list[str] | None = None,
) -> None:
    """Markdown list of every backup with the reason it is kept or removed, and what happened to segments."""
    verb = "would remove" if dry_run else "removed"
    lines = [f"# Retention for {cluster_id}", "", "| backup | decision | reason |", "|---|---|---|"]
    for b in sorted(plan.keep + plan.remove, key=lambda b: b.time, reverse=True):
        decision = verb if b.key in removed else "keep"
        lines.append(f"| `{b.key}` | {decision} | {plan.reasons.get(b.key, '')} |")
    lines += ["", *(f"**Warning:** {w}" for w in plan.warnings)] if plan.warnings else []
    lines += (
        segment_lines(segments, removed_segments or [], verb) if segments and segments.keep + segments.remove else []
    )
    create_markdown_artifact(
        "\n".join(lines), key=artifact_key("retention", cluster_id), description=f"Retention decisions for {cluster_id}"
    )


def segment_lines(segments: SegmentRetention, removed: list[str], verb: str, shown: int = 20) -> list[str]:
    """Continuous backup segments: how many are kept and removed, and the removed ones (the first `shown`)."""
    lines = ["", f"## Segments: keep {len(segments.keep)}, {verb} {len(removed)}", ""]
    lines += [f"- {verb} `{key}` ({segments.reasons.get(key, '')})" for key in removed[:shown]]
    if len(removed) > shown:
        lines.append(f"- ... and {len(removed) - shown} more")
    return lines


def backups_table(cluster_id: str, backups: list[Backup]) -> list[dict]:
    """Rows for the backup listing, newest first."""
    rows = []
    for b in sorted(backups, key=lambda b: b.time, reverse=True):
        m = b.manifest
        rows.append(
            {
                "key": b.key,
                "time (UTC)": b.time.strftime("%Y-%m-%d %H:%M:%S"),
                "size": human_size(b.size),
                "state": "legacy" if b.legacy else ("complete" if b.complete else "incomplete"),
                "compression": b.compression + (" + age" if b.encrypted else ""),
                "revision": m.revision if m else "",
                "keys": m.key_count if m else "",
                "etcd": m.etcd_version if m else "",
                "verified": _verified(b),
            }
        )
    create_table_artifact(
        key=artifact_key("backups", cluster_id),
        table=rows or [{"key": "(no backups)"}],
        description=f"Backups of {cluster_id}",
    )
    return rows
