"""Retry rules shared by every task: retry only what a retry can fix."""

import os

from prefect.tasks import exponential_backoff

from etcd_backup.errors import is_transient


def retry_transient(task, task_run, state) -> bool:
    """Prefect retry_condition_fn: retry when the task failed with a transient error."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - we only classify it
        return is_transient(exc)
    return False


RETRY = dict(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=float(os.environ.get("ETCD_BACKUP_RETRY_DELAY", "5"))),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_transient,
)
