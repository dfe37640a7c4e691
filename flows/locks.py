"""Locks every worker shares, kept by the Prefect server as global concurrency limits.

- `etcd-backup-transfers` (limit N, `[limits] backups_at_once` in backups.toml, default 4): at most N backups
  and verifications move data at once, across every cluster and worker, so uploads do not saturate the link.
  A run waits for a slot.
- `etcd-cluster-<cluster>` (limit 1): a restore and a backup of one cluster never run at the same time. A
  restore waits for a running backup; a backup that finds a restore of its cluster running ends at once,
  Completed and named Skipped, with a message saying so. A backup that finds the lock held by anything else
  (another backup of the cluster, or a run whose process died and whose lease has not run out yet) waits.

Slots are leases: the holder's process renews them, and a slot whose process died comes back when its lease
runs out. A failed renewal (the API gone for a while) is logged and the run goes on. Missing limits are
created on first use, so flows deployed with `prefect deploy` or run by hand are locked too.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
from prefect import get_run_logger
from prefect.concurrency.asyncio import AcquireConcurrencySlotTimeoutError, ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.runtime import flow_run
from prefect.states import Completed

from etcd_backup import flow_names
from etcd_backup.errors import EtcdBackupError, RestoreRefused

F = TypeVar("F", bound=Callable[..., Any])

TRANSFERS = "etcd-backup-transfers"
DEFAULT_TRANSFERS = 4
LEASE_SECONDS = 60  # the API's minimum: a dead backup's slots come back within it (plus the server's reaper loop)
RESTORE_LEASE_SECONDS = 600  # a restore keeps its lock through an API outage this long
RESTORE_WAIT_SECONDS = 3600  # a restore waits this long for the running backup of its cluster
BACKUP_LOCK_WAIT_SECONDS = 900  # a backup waits this long for a cluster lock held by something other than a restore
LOCK_POLL_SECONDS = 10
LOCK_REPORT_SECONDS = 60  # a waiting restore says every minute what holds its lock
RESTORES = (flow_names.RESTORE_CLUSTER, flow_names.RESTORE_MEMBER)


def cluster_lock(cluster: str) -> str:
    """The name of the lock (a global concurrency limit of 1) of one cluster's etcd."""
    return f"etcd-cluster-{cluster}"


def ensure_limit(name: str, limit: int) -> int:
    """Create the global concurrency limit when it does not exist; return its limit."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(name).limit
        except ObjectNotFound:
            pass
        with contextlib.suppress(ObjectAlreadyExists):  # another run created it meanwhile
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
        return client.read_global_concurrency_limit_by_name(name).limit


def set_limit(name: str, limit: int) -> None:
    """Create the global concurrency limit, or set its limit (what `deploy` and `serve` do with the config)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, limit)


@contextlib.contextmanager
def held(name: str, lease: float, timeout: float | None = None, wait: bool = True) -> Iterator[None]:
    """Hold one slot of a limit (waiting up to timeout, or not at all); a failed release is logged, not raised."""
    slot = concurrency(
        name,
        timeout_seconds=timeout,
        max_retries=None if wait else 0,
        lease_duration=lease,
        strict=True,
        raise_on_lease_renewal_failure=False,
    )
    slot.__enter__()
    failed: BaseException | None = None
    try:
        yield
    except BaseException as exc:
        failed = exc
        raise
    finally:
        try:
            slot.__exit__(type(failed) if failed else None, failed, failed.__traceback__ if failed else None)
        except Exception as exc:  # noqa: BLE001 - the lease runs out by itself; the run's outcome stands
            if exc is not failed:
                get_run_logger().warning("could not release lock %s (%s); its lease ends within %d s", name, exc, lease)


def busy(exc: ConcurrencySlotAcquisitionError) -> bool:
    """True when the slot was refused because the limit is full (HTTP 423), not for another reason."""
    cause = exc.__cause__
    return isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423


def running_restore(cluster: str) -> str | None:
    """'<flow> run <name>' of a restore of this cluster that is running or paused, or None."""
    return _running(cluster, RESTORES)


def lock_holder(cluster: str, waiting: str = "") -> str:
    """Who most likely holds the cluster's lock, in words for the log of the run `waiting` (its flow run id)."""
    found = _running(cluster, (flow_names.BACKUP, *RESTORES), but=waiting)
    if found:
        return f"{found} holds it"
    return (
        f"no backup or restore of {cluster} is running: a run that died holding it; its lease frees it within "
        f"{RESTORE_LEASE_SECONDS // 60} min, or delete {cluster_lock(cluster)} under Concurrency in the UI"
    )


def _running(cluster: str, flows: tuple[str, ...], but: str = "") -> str | None:
    """'<flow> run <name>' of a run (not `but`) of these flows for this cluster, running or paused, or None."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState
    from prefect.client.schemas.objects import StateType

    active = FlowRunFilter(state=FlowRunFilterState(type={"any_": [StateType.RUNNING, StateType.PAUSED]}))
    with get_client(sync_client=True) as client:
        for flow_name in flows:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])), flow_run_filter=active, limit=100
            )
            for run in runs:
                if run.parameters.get("cluster") == cluster and str(run.id) != but:
                    return f"{flow_name} run {run.name!r}"
    return None


def _arguments(fn: Callable[..., Any], args: tuple, kwargs: dict) -> dict[str, Any]:
    bound = inspect.signature(fn).bind(*args, **kwargs)
    bound.apply_defaults()
    return bound.arguments


def _lock_error(name: str, exc: Exception) -> EtcdBackupError:
    return EtcdBackupError(f"could not take lock {name} from the Prefect API: {exc}", step="lock")


def transfer_slot(fn: F) -> F:
    """Wrap a flow function: it runs holding one slot of `etcd-backup-transfers` (waiting for one)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with contextlib.ExitStack() as stack:
            _take_transfer_slot(stack)
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]


def backup_locks(fn: F) -> F:
    """Wrap a backup flow function: a transfer slot, then its cluster's lock; skip it while a restore runs."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        cluster = _arguments(fn, args, kwargs)["cluster"]
        with contextlib.ExitStack() as stack:
            _take_transfer_slot(stack)
            skipped = _take_cluster_lock_unless_restoring(stack, cluster)
            if skipped:
                get_run_logger().warning("%s", skipped)
                return Completed(name="Skipped", message=skipped)
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]


def restore_lock(fn: F) -> F:
    """Wrap a restore flow function: it waits for its cluster's lock and holds it to the end (not for dry runs)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        arguments = _arguments(fn, args, kwargs)
        if arguments.get("dry_run"):
            return fn(*args, **kwargs)
        with contextlib.ExitStack() as stack:
            _wait_for_cluster_lock(stack, arguments["cluster"])
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]


def _take_transfer_slot(stack: contextlib.ExitStack) -> None:
    try:
        limit = ensure_limit(TRANSFERS, DEFAULT_TRANSFERS)
        began = time.monotonic()
        stack.enter_context(held(TRANSFERS, LEASE_SECONDS))
    except (ConcurrencySlotAcquisitionError, httpx.HTTPError) as exc:
        raise _lock_error(TRANSFERS, exc) from None
    waited = time.monotonic() - began
    if waited >= 1:
        get_run_logger().info("waited %.0f s for a transfer slot (%s: %d at once)", waited, TRANSFERS, limit)


def _take_cluster_lock_unless_restoring(stack: contextlib.ExitStack, cluster: str) -> str | None:
    """Take the cluster's lock; None when taken, else why the backup is skipped (a restore runs, or it stayed held)."""
    name = cluster_lock(cluster)
    deadline, told = time.monotonic() + BACKUP_LOCK_WAIT_SECONDS, False
    try:
        ensure_limit(name, 1)
        while True:
            try:
                stack.enter_context(held(name, LEASE_SECONDS, wait=False))
                return None
            except ConcurrencySlotAcquisitionError as exc:
                if not busy(exc):
                    raise
            restore = running_restore(cluster)
            if restore:
                return f"Backup of {cluster} skipped: a restore of {cluster} is running ({restore}, lock {name})."
            if time.monotonic() > deadline:
                return (
                    f"Backup of {cluster} skipped: lock {name} stayed held for {BACKUP_LOCK_WAIT_SECONDS} s and no "
                    f"restore of {cluster} is running (see the global concurrency limits in the UI)."
                )
            if not told:
                told = True
                get_run_logger().info(
                    "lock %s is held by another backup of %s or by a run that ended without releasing it; "
                    "waiting for it (at most %d s)",
                    name,
                    cluster,
                    BACKUP_LOCK_WAIT_SECONDS,
                )
            time.sleep(LOCK_POLL_SECONDS)
    except (ConcurrencySlotAcquisitionError, httpx.HTTPError) as exc:
        raise _lock_error(name, exc) from None


def _wait_for_cluster_lock(stack: contextlib.ExitStack, cluster: str) -> None:
    name, logger = cluster_lock(cluster), get_run_logger()
    began, me = time.monotonic(), str(flow_run.id)

    def report() -> None:
        try:
            holder = lock_holder(cluster, me)
        except httpx.HTTPError as exc:
            holder = f"the Prefect API did not say who holds it ({exc})"
        logger.warning("still waiting for lock %s after %.0f s: %s", name, time.monotonic() - began, holder)

    try:
        ensure_limit(name, 1)
        logger.info("taking lock %s (a running backup of %s finishes first)", name, cluster)
        with every(LOCK_REPORT_SECONDS, report):
            stack.enter_context(held(name, RESTORE_LEASE_SECONDS, timeout=RESTORE_WAIT_SECONDS))
    except AcquireConcurrencySlotTimeoutError:
        raise RestoreRefused(
            f"lock {name} was not free within {RESTORE_WAIT_SECONDS} s ({lock_holder(cluster, me)}); nothing was "
            "changed",
            step="lock",
        ) from None
    except (ConcurrencySlotAcquisitionError, httpx.HTTPError) as exc:
        raise _lock_error(name, exc) from None
    logger.info("lock %s taken after %.0f s", name, time.monotonic() - began)


@contextlib.contextmanager
def every(seconds: float, call: Callable[[], None]) -> Iterator[None]:
    """Call call() every `seconds` in a thread while the block runs."""
    done = threading.Event()

    def loop() -> None:
        while not done.wait(seconds):
            call()

    thread = threading.Thread(target=loop, name="lock-report", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
