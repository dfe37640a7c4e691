"""Spike for issue 13: a Prefect server on PostgreSQL, a process pool, two workers, and the concurrency design.

Uses throwaway flows (tests/scale_flows.py), not the project's backup flow. Measurements are printed
(run with -s to see them); the assertions are about behaviour only.
"""

from __future__ import annotations

import statistics
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy, StateType
from prefect.deployments import run_deployment
from prefect.deployments.runner import EntrypointType
from prefect.schedules import Cron

from tests.scale_flows import BACKUP_SLOTS, LEASE_SECONDS, cluster_lock, spike_backup, spike_restore
from tests.servers.prefect_cluster import ZOMBIE_AFTER_SECONDS

pytestmark = [pytest.mark.scale, pytest.mark.slow, pytest.mark.xdist_group("scale")]  # one cluster, tests in order

UPLOAD_LIMIT = 4
CLUSTERS = 20
TERMINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}


@pytest.fixture(autouse=True)
def _client(prefect_cluster):  # noqa: F811
    """Point this process's Prefect client at the cluster and make sure the upload limit exists."""
    with prefect_cluster.settings():
        prefect_cluster.create_limit(BACKUP_SLOTS, UPLOAD_LIMIT)
        yield


def deploy_cluster(cluster, name: str, cron: str | None = None) -> dict:
    """What `deployments deploy` would create per cluster: a backup (limit 1, queued) and a restore, plus its lock."""
    tags = ["etcd-backup", f"cluster:{name}"]
    backup = spike_backup.to_deployment(
        name=name,
        entrypoint_type=EntrypointType.MODULE_PATH,
        parameters={"cluster": name},
        schedule=Cron(cron, timezone="UTC") if cron else None,
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        tags=tags,
    )
    restore = spike_restore.to_deployment(
        name=name, entrypoint_type=EntrypointType.MODULE_PATH, parameters={"cluster": name}, tags=tags
    )
    cluster.create_limit(cluster_lock(name), 1)
    return {"backup": backup.apply(work_pool_name=cluster.pool), "restore": restore.apply(work_pool_name=cluster.pool)}


def start(flow_name: str, name: str, **parameters):
    """Create a flow run of a deployment without waiting for it."""
    return run_deployment(f"{flow_name}/{name}", parameters=parameters, timeout=0)


def wait_terminal(cluster, flow_run_id, timeout: float = 240):
    """Wait until a flow run reaches a final state and return it."""

    def final():
        with cluster.client() as c:
            run = c.read_flow_run(flow_run_id)
        return run if run.state and run.state.type in TERMINAL else None

    return cluster.wait_for(final, timeout, f"flow run {flow_run_id} to finish", every=1)


def wait_file(cluster, path: Path, timeout: float = 120) -> str:
    """Wait until a marker file has content and return it."""
    return cluster.wait_for(lambda: path.exists() and path.read_text().strip(), timeout, f"marker {path}")


def holds(cluster, flow_run_ids) -> list:
    """The `hold-<cluster>@<worker>` task runs of these flow runs (each one holds the run's slots)."""
    return [t for t in cluster.task_runs(flow_run_ids) if t.name.startswith("hold-")]


def max_overlap(intervals) -> int:
    """The largest number of [start, end) intervals that overlap at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    current = peak = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


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

    def _sample(self):
        server = psutil.Process(self.cluster.server.pid)
        rss = {"server": sum(p.memory_info().rss for p in [server, *server.children(recursive=True)])}
        for name, proc in self.cluster.workers.items():
            worker = psutil.Process(proc.pid)
            rss[name] = worker.memory_info().rss
            for child in worker.children(recursive=True):
                rss["flow-run process"] = max(rss.get("flow-run process", 0), child.memory_info().rss)
        for key, value in rss.items():
            self.peak[key] = max(self.peak.get(key, 0), value // 2**20)


def test_server_on_postgres_keeps_secrets_encrypted_and_requires_auth(prefect_cluster, postgres_server):  # noqa: F811
    """Blocks' secrets are stored Fernet-encrypted with our key (none kept in the database); no auth, no API."""
    import httpx
    from prefect.blocks.system import Secret

    Secret(value="not-in-the-database").save("spike-secret", overwrite=True)
    assert Secret.load("spike-secret").get() == "not-in-the-database"
    database = prefect_cluster.database_url.rsplit("/", 1)[1]
    stored = postgres_server.psql(database, "select data::text from block_document where name = 'spike-secret'")
    assert "not-in-the-database" not in stored and stored.strip('"\n').startswith("gAAAAA")
    assert postgres_server.psql(database, "select count(*) from configuration where key = 'ENCRYPTION_KEY'") == "0\n"
    anonymous = httpx.post(f"{prefect_cluster.api_url}/flows/filter", json={})
    assert anonymous.status_code == 401
    print(f"\nPostgreSQL started in {postgres_server.start_seconds:.2f} s; "
          f"Prefect server (migrations included) healthy in {prefect_cluster.server_start_seconds:.1f} s")  # fmt: skip


def runs_at(cluster, deployment_ids, tick: datetime) -> list:
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
        )


def test_one_cron_tick_of_20_clusters_spreads_over_both_workers_within_the_upload_limit(
    prefect_cluster,  # noqa: F811
    postgres_server,  # noqa: F811
):
    """Every cluster's backup runs once per tick; both workers take runs; never more than UPLOAD_LIMIT hold at once."""
    requests_before = prefect_cluster.request_count()
    began = time.monotonic()
    tick = (datetime.now(UTC) + timedelta(seconds=120)).replace(second=0, microsecond=0)
    names = [f"c{i:02d}" for i in range(CLUSTERS)]
    cron = f"{tick.minute} {tick.hour} * * *"  # every cluster on the same minute, once a day: one tick in this test
    deployed = {name: deploy_cluster(prefect_cluster, name, cron=cron) for name in names}
    deploy_seconds = time.monotonic() - began
    deploy_requests = prefect_cluster.request_count() - requests_before
    backup_ids = [d["backup"] for d in deployed.values()]
    sampler = MemorySampler(prefect_cluster)
    try:
        prefect_cluster.wait_for(
            lambda: len(runs_at(prefect_cluster, backup_ids, tick)) == CLUSTERS, 120, f"{CLUSTERS} runs at {tick}"
        )
        scheduled_after = time.monotonic() - began
        run_ids = [r.id for r in runs_at(prefect_cluster, backup_ids, tick)]
        sampler.start()
        requests_at = prefect_cluster.wait_for(
            lambda: datetime.now(UTC) >= tick and prefect_cluster.request_count(), 150, "the tick"
        )
        finished = [wait_terminal(prefect_cluster, run_id, timeout=300) for run_id in run_ids]
        tick_requests = prefect_cluster.request_count() - requests_at
    finally:
        sampler.running = False
        with prefect_cluster.client() as c:
            for deployment_id in backup_ids:
                c.pause_deployment(deployment_id)  # also deletes the runs scheduled for later ticks

    assert [r.state.type for r in finished] == [StateType.COMPLETED] * CLUSTERS
    held = holds(prefect_cluster, run_ids)
    assert sorted(t.name.split("@")[0] for t in held) == sorted(f"hold-{n}" for n in names)
    assert max_overlap([(t.start_time, t.end_time) for t in held]) <= UPLOAD_LIMIT
    assert {t.name.split("@")[1] for t in held} == {"worker-1", "worker-2"}

    lateness = sorted((r.start_time - r.expected_start_time).total_seconds() for r in finished)
    hold_starts = sorted((t.start_time - tick).total_seconds() for t in held)
    last_end = max(r.end_time for r in finished)
    per_worker = {w: sum(t.name.endswith(w) for t in held) for w in ("worker-1", "worker-2")}
    database = prefect_cluster.database_url.rsplit("/", 1)[1]
    events = postgres_server.psql(
        database,
        f"select count(*) from events where occurred between '{tick.isoformat()}' and '{last_end.isoformat()}'",
    )
    print(
        f"\n{CLUSTERS} clusters: deployed {2 * CLUSTERS} deployments + {CLUSTERS} locks in {deploy_seconds:.1f} s "
        f"({deploy_requests} requests); all {CLUSTERS} runs of the tick existed {scheduled_after:.1f} s after "
        f"the first deploy.\ntick {tick:%H:%M:%S}: flow runs started {lateness[0]:.1f}.."
        f"{statistics.median(lateness):.1f}..{lateness[-1]:.1f} s (min..median..max) after the tick; holds began "
        f"{hold_starts[0]:.1f}..{hold_starts[-1]:.1f} s; last run ended {(last_end - tick).total_seconds():.1f} s "
        f"after the tick; runs per worker {per_worker}.\nAPI requests from the tick to the last run's end: "
        f"{tick_requests} ({tick_requests / CLUSTERS:.0f} per run); events stored: {int(events)} "
        f"({int(events) / CLUSTERS:.0f} per run). "
        f"Peak RSS MiB: {sampler.peak}"
    )


def test_restore_waits_for_a_running_backup_and_a_backup_during_a_restore_is_skipped(prefect_cluster, tmp_path):  # noqa: F811
    """The per-cluster lock: restore waits for the running backup; a backup that meets a restore is skipped at once."""
    deploy_cluster(prefect_cluster, "lockx")
    backup = start("spike-backup", "lockx", seconds=30, marker=str(tmp_path / "backup"))
    wait_file(prefect_cluster, tmp_path / "backup")
    restore = start("spike-restore", "lockx", seconds=8, marker=str(tmp_path / "restore"))
    backup, restore = wait_terminal(prefect_cluster, backup.id), wait_terminal(prefect_cluster, restore.id)
    assert (backup.state.type, restore.state.type) == (StateType.COMPLETED, StateType.COMPLETED)
    (backup_hold,), (restore_hold,) = holds(prefect_cluster, [backup.id]), holds(prefect_cluster, [restore.id])
    assert restore.start_time < backup_hold.end_time <= restore_hold.start_time  # it was running, and waited

    restore = start("spike-restore", "lockx", seconds=45, marker=str(tmp_path / "restore2"))
    wait_file(prefect_cluster, tmp_path / "restore2")
    skipped = wait_terminal(prefect_cluster, start("spike-backup", "lockx", seconds=8).id)
    restore = wait_terminal(prefect_cluster, restore.id)
    (restore_hold,) = holds(prefect_cluster, [restore.id])
    assert (skipped.state.type, skipped.state.name) == (StateType.COMPLETED, "Skipped")
    assert "restore of lockx is running" in skipped.state.message
    assert holds(prefect_cluster, [skipped.id]) == []
    assert skipped.end_time < restore_hold.end_time
    assert prefect_cluster.active_slots(cluster_lock("lockx")) == 0
    print(f"\nskipped backup ran {(skipped.end_time - skipped.start_time).total_seconds():.1f} s: "
          f"{skipped.state.message}")  # fmt: skip


def test_sigkilled_worker_run_ends_crashed_its_slots_come_back_and_the_other_worker_runs_the_next(
    prefect_cluster,  # noqa: F811
    tmp_path,
):
    """A worker machine lost mid-backup: the run ends Crashed (heartbeat automation), every slot is released."""
    ids = deploy_cluster(prefect_cluster, "killx")
    run = start("spike-backup", "killx", seconds=900, marker=str(tmp_path / "hold"))
    victim = wait_file(prefect_cluster, tmp_path / "hold").split()[1]
    killed_at = time.monotonic()
    prefect_cluster.kill_worker(victim)

    def deployment_slots() -> int:
        with prefect_cluster.client() as c:
            return c.read_deployment(ids["backup"]).global_concurrency_limit.active_slots

    timeline = {}
    crashed = None
    while time.monotonic() - killed_at < ZOMBIE_AFTER_SECONDS + 150:
        with prefect_cluster.client() as c:
            state = c.read_flow_run(run.id).state
        now = round(time.monotonic() - killed_at, 1)
        if state.type == StateType.CRASHED and crashed is None:
            crashed, timeline["crashed"] = state, now
        if "global slots back" not in timeline and not any(
            prefect_cluster.active_slots(n) for n in (BACKUP_SLOTS, cluster_lock("killx"))
        ):
            timeline["global slots back"] = now
        if crashed and "deployment slot back" not in timeline and deployment_slots() == 0:
            timeline["deployment slot back"] = now
        if len(timeline) == 3:
            break
        time.sleep(1)
    assert crashed is not None, f"run still {state.type} {time.monotonic() - killed_at:.0f} s after the kill"
    assert "heartbeat" in crashed.message
    assert set(timeline) == {"crashed", "global slots back", "deployment slot back"}, timeline

    again = wait_terminal(prefect_cluster, start("spike-backup", "killx", seconds=1).id)
    assert again.state.type == StateType.COMPLETED
    (hold,) = holds(prefect_cluster, [again.id])
    assert not hold.name.endswith(victim)
    prefect_cluster.start_worker(victim)
    print(f"\nkilled {victim}: seconds after SIGKILL {timeline} "
          f"(heartbeat 30 s, automation {ZOMBIE_AFTER_SECONDS} s, lease {LEASE_SECONDS} s)")  # fmt: skip
