"""`python -m deployments deploy`: every deployment of the file on a work pool, through the API, with its limits.

Workers that have this package installed run the flows by module path (`flows.backup.backup_etcd`): no
machine path is stored, so any worker of the pool can run any run. Deploying the same file again updates
the deployments in place; a deployment of the same name made by someone else (another file, `serve`) is
not replaced silently.
"""

from __future__ import annotations

import contextvars
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from deployments.build import BY_HAND_QUEUE, MODULE, all_deployments
from deployments.config import BackupsFile
from deployments.conflicts import managed_by, manager, refuse_replacements
from flows.locks import TRANSFERS, cluster_lock, ensure_limit, set_limit

T, R = TypeVar("T"), TypeVar("R")
QUEUE_ABOUT = "Runs started by hand (restores, diagnose, list, prune): workers take them before scheduled backups."
PAGE = 200  # the API's largest page
APPLY_THREADS = 8  # deployments created at once: 1,000 clusters are 7,000 deployments


@dataclass
class Deployed:
    """What one `deploy` did."""

    pool: str
    pool_created: bool
    deployments: list[str]
    stale: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def owner(config: str) -> str:
    """Who deployed: this command, the host and the schedule file (the same pair updates in place)."""
    return f"`python -m deployments deploy` from {socket.gethostname()}:{os.path.abspath(config)}"


def deploy(file: BackupsFile, *, pool: str, config: str, replace: bool = False, remove_stale: bool = False) -> Deployed:
    """Check, then create or update the pool, the limits and every deployment; list (or remove) stale ones."""
    who = owner(config)
    deployments = all_deployments(file.backups, managed_by("Deployed", who), MODULE, BY_HAND_QUEUE)

    def ours(description: str | None) -> bool:
        return manager(description) == f"deployed by {who}"

    refuse_replacements(deployments, replace, "deploy", "or pass --replace to take them over", ours)
    created = ensure_pool(pool)
    ensure_first_queue(pool, BY_HAND_QUEUE)
    set_limit(TRANSFERS, file.limits.backups_at_once)
    for cluster in dict.fromkeys(s.cluster for s in file.backups):
        ensure_limit(cluster_lock(cluster), 1)
    in_threads(lambda d: d.apply(work_pool_name=pool), deployments)
    names = [f"{d.flow_name}/{d.name}" for d in deployments]
    stale = stale_deployments(who, set(names))
    if remove_stale:
        _delete(stale)
    return Deployed(pool, created, names, stale, sorted(stale) if remove_stale else [])


def in_threads(call: Callable[[T], R], items: list[T]) -> list[R]:
    """call(item) for every item, APPLY_THREADS at a time, each in a copy of this context (the Prefect settings)."""
    context = contextvars.copy_context()
    with ThreadPoolExecutor(APPLY_THREADS) as threads:
        return list(threads.map(lambda item: context.copy().run(call, item), items))


def ensure_pool(pool: str) -> bool:
    """Create a process work pool of that name unless one exists (of any type); True when created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
            return False
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=template))
            return True


def ensure_first_queue(pool: str, queue: str) -> None:
    """Make `queue` the pool's priority-1 work queue: workers take its runs before the other queues' runs."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_work_queue_by_name(queue, work_pool_name=pool)
        except ObjectNotFound:
            client.create_work_queue(queue, description=QUEUE_ABOUT, priority=1, work_pool_name=pool)
            return
        if found.priority != 1:
            client.update_work_queue(found.id, priority=1)


def stale_deployments(who: str, current: set[str]) -> dict[str, str]:
    """Deployments this file deployed before that it no longer has: '<flow>/<name>' -> id."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

    tagged = DeploymentFilter(tags=DeploymentFilterTags(all_=["etcd-backup"]))
    ours: list = []
    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows(limit=200)}
        while page := client.read_deployments(deployment_filter=tagged, limit=PAGE, offset=len(ours)):
            ours += page
    stale = {}
    for d in ours:
        name = f"{flows.get(d.flow_id, '?')}/{d.name}"
        if manager(d.description) == f"deployed by {who}" and name not in current:
            stale[name] = str(d.id)
    return stale


def _delete(stale: dict[str, str]) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for deployment_id in stale.values():
            client.delete_deployment(deployment_id)
