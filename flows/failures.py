"""Readable failures: a run that fails on a project error ends with one line a person can act on.

Use it on a flow with one line under `@flow(...)`:

    @flow(name="etcd-backup")
    @readable_failures
    def backup_etcd(...): ...

An EtcdBackupError raised in the flow (or by a task it calls) then ends the run Failed with
the state message "<flow> failed: [<step> on <node>] <what happened> (next: <what to do>)",
shown in the UI's run header and in the alert; the traceback is logged once, at debug level.
Importing this module also installs a log filter that keeps Prefect's "Task run failed"
records of project errors to their one line (no traceback): the flow logs it once. Other exceptions are bugs: they
keep Prefect's traceback.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import get_run_logger
from prefect.context import FlowRunContext
from prefect.states import Failed

from etcd_backup.errors import (
    BackupCorrupt,
    EtcdBackupError,
    EtcdUnavailable,
    NodeError,
    NotFound,
    StorageError,
)

F = TypeVar("F", bound=Callable[..., Any])
TASK_LOGGER = "prefect.task_runs"
NEXT = (  # most specific first
    (NotFound, "check the name, or run etcd-list-backups to see what the storage holds"),
    (StorageError, "check the storage block (its check() proves every right) and that the storage answers"),
    (EtcdUnavailable, "run etcd-diagnose to see which members are down and what to run"),
    (BackupCorrupt, "restore another backup (etcd-list-backups lists them)"),
    (NodeError, "run etcd-diagnose; check SSH access and free disk on that node"),
)


def failure_line(exc: EtcdBackupError, flow_name: str | None = None) -> str:
    """'<flow> failed: <error> (next: <hint>)' on one line."""
    text = " ".join(str(exc).split())
    hint = next((h for kind, h in NEXT if isinstance(exc, kind)), None)
    return f"{flow_name or 'run'} failed: {text}" + (f" (next: {hint})" if hint else "")


def readable_failures(fn: F) -> F:
    """Wrap a flow function: a project error ends the run Failed with failure_line() as its state message."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EtcdBackupError as exc:
            context = FlowRunContext.get()
            line = failure_line(exc, context.flow.name if context and context.flow else None)
            logger = get_run_logger()
            logger.debug("traceback of the failure below", exc_info=exc)
            logger.error("%s", line)
            return Failed(message=line, data=exc)

    # Prefect reads parameter types from the wrapper: give it the flow's own, resolved in the flow's module
    run.__signature__ = inspect.signature(fn, eval_str=True)  # type: ignore[attr-defined]
    return run  # type: ignore[return-value]


class OneLineForProjectErrors(logging.Filter):
    """Drop the traceback from run log records about an EtcdBackupError (readable_failures logs it once)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record; strip exc_info from those about project errors."""
        known = record.exc_info and isinstance(record.exc_info[1], EtcdBackupError)
        if known and record.levelno > logging.DEBUG:
            record.exc_info, record.exc_text = None, None
        return True


def install_log_filter() -> None:
    """Attach the filter to Prefect's task run logger (once); dictConfig keeps a logger's filters."""
    logger = logging.getLogger(TASK_LOGGER)
    if not any(isinstance(f, OneLineForProjectErrors) for f in logger.filters):
        logger.addFilter(OneLineForProjectErrors())


install_log_filter()
