"""prefect.yaml generated from the schedule file: the deployments of `deploy`, for `prefect deploy --all`."""

from __future__ import annotations

import yaml

from deployments.build import BY_HAND_QUEUE, MODULE, all_deployments, plain
from deployments.config import BackupsFile
from flows.locks import TRANSFERS

HEADER = """\
# Generated from {source} by `python -m deployments yaml --config {source} --pool {pool}`.
# Do not edit: edit {source} and generate it again (one source of truth). It holds the deployments
# `python -m deployments deploy` creates, for teams that deploy with the Prefect CLI:
#   prefect --no-prompt deploy --all        (from any directory: workers import the installed package by
#                                            module path, so there is no pull step and no machine path)
# `deploy` also sets the global concurrency limit {transfers} to [limits] backups_at_once ({limit});
# with the CLI set it yourself: prefect gcl create {transfers} --limit {limit}  (created with 4 if missing).
# Runs started by hand go to the work queue {queue}; `deploy` makes it the pool's first queue, so workers take
# a restore before queued backups. With the CLI: prefect work-queue create {queue} --pool {pool} --priority 1
"""


def render(file: BackupsFile, pool: str, source: str) -> str:
    """The text of prefect.yaml for these entries on this work pool."""
    document = {
        "name": "etcd-backup",
        "prefect-version": ">=3.9,<3.10",
        "pull": [],
        "deployments": [_entry(d, pool) for d in all_deployments(file.backups, "", MODULE, BY_HAND_QUEUE)],
    }
    header = HEADER.format(
        source=source, pool=pool, transfers=TRANSFERS, limit=file.limits.backups_at_once, queue=BY_HAND_QUEUE
    )
    return header + "\n" + yaml.safe_dump(document, sort_keys=False, width=120, allow_unicode=True)


def _entry(d, pool: str) -> dict:
    entry: dict = {"name": d.name, "description": d.description, "entrypoint": d.entrypoint, "tags": list(d.tags)}
    if d.schedules:
        entry["schedules"] = [{"cron": s.schedule.cron, "timezone": s.schedule.timezone} for s in d.schedules]
    if d.concurrency_limit:
        strategy = d.concurrency_options.collision_strategy
        entry["concurrency_limit"] = {"limit": d.concurrency_limit, "collision_strategy": str(strategy.value)}
    entry["parameters"] = plain(d.parameters)
    entry["work_pool"] = {"name": pool} | ({"work_queue_name": d.work_queue_name} if d.work_queue_name else {})
    return entry
