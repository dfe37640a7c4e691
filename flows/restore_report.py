"""Where a restore says what it will do and what it did: plan and report artifacts, the log, and local files.

The report goes first to the run's log and to a local file under ETCD_BACKUP_REPORT_DIR
(default ~/.etcd-backup/reports), then to a Prefect artifact: an API that is away when
the restore ends costs the artifact, never the report.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from etcd_backup.restore.executor import ExecutionReport
from etcd_backup.restore.plan import Plan
from etcd_backup.restore.render import outcome, plan_markdown, report_markdown
from etcd_backup.restore.source import Choice
from tasks.artifacts import artifact_key

REPORT_DIR = Path(os.environ.get("ETCD_BACKUP_REPORT_DIR", "~/.etcd-backup/reports")).expanduser()
KEYS = {"restore": ("restore-plan", "restore-report"), "member replacement": ("member-plan", "member-report")}


def stem(plan: Plan) -> Path:
    """The local path (without suffix) of a run's journal and report: <dir>/<kind>-<cluster>-<run id>."""
    return REPORT_DIR / f"{plan.kind.replace(' ', '-')}-{plan.cluster_id}-{plan.run_id}"


def journal_path(plan: Plan) -> Path:
    """The JSON-lines journal the executor appends to as each step starts, ends and is undone."""
    return stem(plan).with_suffix(".jsonl")


def plan_artifact(plan: Plan, dry_run: bool, choice: Choice | None = None) -> str:
    """Publish the full plan (and for `latest`, the newer objects skipped) as a markdown artifact; returns its key."""
    key = artifact_key(KEYS[plan.kind][0], plan.cluster_id)
    title = "Dry run (nothing was changed)" if dry_run else "Plan"
    text = plan_markdown(plan, title)
    if choice is not None and choice.skipped:
        skipped = "\n".join(f"- `{k}`: {why}" for k, why in choice.skipped)
        text += f"\n## Newer objects not restored\n\n{skipped}\n"
    create_markdown_artifact(text, key=key, description=f"{title}: {plan.kind} of {plan.cluster_id}")
    return key


def publish_report(plan: Plan, report: ExecutionReport) -> str:
    """Write the report to the log and a local file, then publish it as an artifact if the API answers; its key."""
    logger = get_run_logger()
    text = report_markdown(plan, report)
    path = stem(plan).with_suffix(".md")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        where = str(path)
    except OSError as exc:
        where = f"(not written: {exc})"
    logger.info("%s of %s %s; report file %s\n%s", plan.kind, plan.cluster_id, outcome(report), where, text)
    key = artifact_key(KEYS[plan.kind][1], plan.cluster_id)
    try:
        create_markdown_artifact(text, key=key, description=f"{plan.kind} of {plan.cluster_id}: {outcome(report)}")
    except Exception as exc:  # noqa: BLE001 - the API may be away; the report is in the log and the file
        logger.warning("could not publish the report artifact (%s); the report is in %s", exc.__class__.__name__, where)
        return where
    return key
