"""What the scale tests and the scale bench read back from a PrefectCluster: runs, their windows, their workers."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import psutil
from prefect.client.schemas.objects import StateType

from tests.servers.tcp_proxy import TCPProxy

TERMINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}
PAGE = 200
STALL_AFTER = 64 * 1024  # bytes of an upload relayed before the relay holds it


def deploy(cluster, config: Path, *extra: str) -> str:
    """Run `python -m deployments deploy --config F --pool <pool>` against the cluster; return its output."""
    done = subprocess.run(
        [sys.executable, "-m", "deployments", "deploy", "--config", str(config), "--pool", cluster.pool, *extra],
        env=cluster.client_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def deploy_backups(cluster, config: Path, by: str = "the scale tests") -> str:
    """The etcd-backup deployments of the file, as `deploy` makes them (build.py), and its transfer limit.

    Only the scheduled ones: `deploy` adds six manual deployments per cluster (140 for 20), which take minutes
    to create on a loaded 2-core machine; the restore-lock test runs the whole command on its own file.
    """
    from deployments.build import MODULE, backup_deployment
    from deployments.config import load_config
    from deployments.conflicts import managed_by
    from deployments.deploy import in_threads
    from flows.locks import TRANSFERS, set_limit

    file = load_config(config)
    set_limit(TRANSFERS, file.limits.backups_at_once)
    made = [backup_deployment(s, managed_by("Deployed", by), MODULE) for s in file.backups]
    in_threads(lambda d: d.apply(work_pool_name=cluster.pool), made)
    return f"{len(made)} etcd-backup deployments on work pool {cluster.pool}\n"


def deployment_ids(cluster, flow_name: str, names: list[str]) -> dict[str, object]:
    """name -> id of the deployments of one flow."""
    with cluster.client() as c:
        return {n: c.read_deployment_by_name(f"{flow_name}/{n}").id for n in names}


def runs_at(cluster, deployment_ids: list, tick: datetime) -> list:
    """The flow runs of these deployments expected to start at `tick` (any state)."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
    )

    window = FlowRunFilterExpectedStartTime(after_=tick - timedelta(seconds=1), before_=tick + timedelta(seconds=1))
    with cluster.client() as c:
        return c.read_flow_runs(
            flow_run_filter=FlowRunFilter(expected_start_time=window),
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids)),
            limit=PAGE,
        )


def wait_terminal(cluster, run_ids: list, timeout: float) -> list:
    """Wait until every flow run has a final state; return them in the order of run_ids."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    def final():
        with cluster.client() as c:
            runs = c.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids)), limit=PAGE)
        by_id = {r.id: r for r in runs if r.state and r.state.type in TERMINAL}
        return [by_id[i] for i in run_ids] if len(by_id) == len(run_ids) else None

    return cluster.wait_for(final, timeout, f"{len(run_ids)} flow run(s) to finish", every=1)


def all_pages(read) -> list:
    """Every item of a paged API read: read(offset) page after page until a short one."""
    found: list = []
    while page := read(len(found)):
        found += page
        if len(page) < PAGE:
            break
    return found


def task_runs(cluster, run_ids: list) -> list:
    """Every task run of these flow runs (all pages of each batch of 20 runs)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    found: list = []
    with cluster.client() as c:
        for start in range(0, len(run_ids), 20):
            runs = FlowRunFilter(id=FlowRunFilterId(any_=run_ids[start : start + 20]))
            found += all_pages(
                lambda offset, runs=runs: c.read_task_runs(flow_run_filter=runs, limit=PAGE, offset=offset)
            )
    return found


def work_windows(cluster, run_ids: list) -> dict:
    """flow run id -> (first task run's start, last task run's end): inside the run's transfer slot and lock."""
    windows: dict = {}
    for t in task_runs(cluster, run_ids):
        if t.start_time is None or t.end_time is None:
            continue
        start, end = windows.get(t.flow_run_id, (t.start_time, t.end_time))
        windows[t.flow_run_id] = (min(start, t.start_time), max(end, t.end_time))
    return windows


def max_overlap(intervals) -> int:
    """The largest number of [start, end) intervals that overlap at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    current = peak = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def worker_of(cluster, run_id) -> str | None:
    """The worker whose flow-run process ran the run: the process prints the run's URL into its worker's log.

    Not the "submitting flow run" log line: two workers may both submit a run and the server aborts one.
    """
    mark = f"/runs/flow-run/{run_id}"
    for name in cluster.workers:
        if mark in cluster.worker_log(name).read_text(errors="replace"):
            return name
    return None


def run_logs(cluster, run_id) -> str:
    """The flow run's log messages, one per line (every page)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    mine = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
    with cluster.client() as c:
        found = all_pages(lambda offset: c.read_logs(log_filter=mine, limit=PAGE, offset=offset))
    return "\n".join(log.message for log in found)


class MemorySampler(threading.Thread):
    """Peak RSS (MiB) of the server, each worker alone and the largest flow-run process, sampled every 0.5 s."""

    def __init__(self, cluster):
        super().__init__(daemon=True)
        self.cluster, self.peak, self.running = cluster, {}, True

    def run(self):
        while self.running:
            try:
                self._sample()
            except psutil.Error:
                pass
            time.sleep(0.5)

    def stop(self) -> dict:
        """Stop sampling and return the peaks."""
        self.running = False
        self.join(2)
        return dict(self.peak)

    def _sample(self):
        server = psutil.Process(self.cluster.server.pid)
        rss = {"server": sum(p.memory_info().rss for p in [server, *server.children(recursive=True)])}
        for name, proc in self.cluster.workers.items():
            if proc.poll() is not None:
                continue
            worker = psutil.Process(proc.pid)
            rss[name] = worker.memory_info().rss
            for child in worker.children(recursive=True):
                rss["flow-run process"] = max(rss.get("flow-run process", 0), child.memory_info().rss)
        for key, value in rss.items():
            self.peak[key] = max(self.peak.get(key, 0), value // 2**20)


class Stall:
    """Hold an upload through the relay once STALL_AFTER bytes went through, until released.

    Each hold lasts at most 50 s, below the S3 client's 60 s timeout; the client's retry is held once more, so
    a slow machine gets about 100 s to reach the point the test waits for before the upload goes on.
    """

    def __init__(self, relay: TCPProxy):
        self.relay, self.holds = relay, 2
        self.stalled, self.go = threading.Event(), threading.Event()
        relay.when_relayed(STALL_AFTER, self._hold)

    def _hold(self) -> None:
        self.stalled.set()
        self.holds -= 1
        if not self.go.wait(50) and self.holds:
            self.relay.when_relayed(STALL_AFTER, self._hold)  # the retry's upload

    def wait(self, timeout: float = 600) -> None:
        assert self.stalled.wait(timeout), "the upload never reached the relay"
