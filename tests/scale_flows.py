"""Throwaway flows for the scale spike: a fake backup and a fake restore that sleep while holding the locks.

They stand in for the project's backup and restore flows (being refactored elsewhere) so that work pools,
workers and concurrency can be tested on their own. Each holds its slots inside one task run named
`hold-<cluster>@<worker>`, whose start and end times the tests read back from the API.

Locks (global concurrency limits, created by the tests):
- `etcd-backup-uploads` (limit N): at most N backups upload at once, across all clusters;
- `etcd-cluster-<cluster>` (limit 1): a restore waits for it; a backup that cannot get it at once is skipped.
"""

from __future__ import annotations

import os
import time

import httpx
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.states import Completed, State

BACKUP_SLOTS = "etcd-backup-uploads"
LEASE_SECONDS = 60  # the API's minimum: a killed holder's slot comes back within this plus the repossessor's loop
RESTORE_WAIT_SECONDS = 900


def cluster_lock(cluster: str) -> str:
    """The name of the global concurrency limit (limit 1) that guards one cluster's etcd."""
    return f"etcd-cluster-{cluster}"


def worker_name() -> str:
    """The worker that started this flow run (workers put their name in the run's environment)."""
    return os.environ.get("PREFECT__WORKER_NAME", "no-worker")


@task(task_run_name="hold-{cluster}@{worker}", cache_policy=NO_CACHE)
def hold(cluster: str, worker: str, seconds: float, marker: str | None) -> float:
    """Sleep while the caller holds its slots; first write our pid to `marker` so a test knows the hold began."""
    if marker:
        with open(marker, "w") as f:
            f.write(f"{os.getpid()} {worker}\n")
    time.sleep(seconds)
    return seconds


def _busy(exc: ConcurrencySlotAcquisitionError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423


@flow(name="spike-backup")
def spike_backup(cluster: str, seconds: float = 2.0, marker: str | None = None) -> float | State:
    """Wait for an upload slot, take the cluster lock without waiting (a running restore wins), then 'back up'."""
    with concurrency(BACKUP_SLOTS, strict=True, lease_duration=LEASE_SECONDS):
        try:
            with concurrency(cluster_lock(cluster), max_retries=0, strict=True, lease_duration=LEASE_SECONDS):
                return hold(cluster, worker_name(), seconds, marker)
        except ConcurrencySlotAcquisitionError as exc:
            if not _busy(exc):
                raise
    message = f"Backup of {cluster} skipped: a restore of {cluster} is running (lock {cluster_lock(cluster)} held)."
    get_run_logger().warning(message)
    return Completed(name="Skipped", message=message)


@flow(name="spike-restore")
def spike_restore(cluster: str, seconds: float = 2.0, marker: str | None = None) -> float:
    """Wait for the cluster lock (a running backup of the cluster finishes first), then 'restore'."""
    get_run_logger().info("Waiting for lock %s: a backup of %s may be running.", cluster_lock(cluster), cluster)
    with concurrency(
        cluster_lock(cluster), strict=True, timeout_seconds=RESTORE_WAIT_SECONDS, lease_duration=LEASE_SECONDS
    ):
        return hold(cluster, worker_name(), seconds, marker)
