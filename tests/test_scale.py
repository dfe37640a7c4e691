"""Many clusters, several workers: a Prefect server on PostgreSQL, a process pool, two workers, the real flows.

One server, one pool and two `prefect worker start` processes for the module (tests/servers/scale_fixtures.py),
20 single-member etcd clusters backed up to one S3 bucket (SeaweedFS), their backup deployments made by
deployments/build.py from one backups.toml as `python -m deployments deploy` makes them, every cluster on the
same cron minutes (the restore-lock test runs the `deploy` command itself). The tests run in file order on one
timeline: the restore-lock test (its own cluster, relay and deployments) before any tick; two ticks; a worker
killed while the pool is quiet, then the next tick, deployed after the kill. A tick's 20 runs may take longer
than a minute on a loaded machine: each cluster's window is read from its own runs' start and end.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.flow_runs import resume_flow_run

from blocks import EtcdCluster as ClusterBlock
from blocks import S3Storage as S3Block
from etcd_backup.catalog import list_backups
from tests.faults.checks import assert_restorable
from tests.fleet.etcd_cluster import EtcdCluster
from tests.fleet.fixtures import start
from tests.restore_helpers import save_cluster_block
from tests.scale_helpers import (
    Stall,
    deploy,
    deploy_backups,
    deployment_ids,
    max_overlap,
    run_logs,
    runs_at,
    task_runs,
    wait_terminal,
    work_windows,
    worker_of,
)
from tests.servers.fixtures import make_s3
from tests.servers.tcp_proxy import TCPProxy

pytestmark = [pytest.mark.scale, pytest.mark.slow, pytest.mark.xdist_group("scale")]  # one timeline, file order

CLUSTERS = 20
AT_ONCE = 4  # [limits] backups_at_once
LEAD_SECONDS = 20  # from the end of `deploy` to the first tick: the scheduler creates the runs meanwhile
DEPLOY = timedelta(seconds=20)  # what deploying the 20 deployments may take here


class Scale:
    """The module's clusters, blocks and backup deployments (deployed on the next ticks by `schedule`)."""

    def __init__(self, cluster, seaweedfs, tmp: Path):
        self.cluster, self.tmp = cluster, tmp
        self.names = [f"c{i:02d}" for i in range(CLUSTERS)]
        self.bucket = seaweedfs.make_bucket()
        self.store = make_s3(seaweedfs, self.bucket)
        port = int(seaweedfs.endpoint.rsplit(":", 1)[1])
        self.relay = TCPProxy("127.0.0.1", port).start()  # c00's uploads (the kill test holds one)
        self.lock_relay = TCPProxy("127.0.0.1", port).start()  # the restore-lock test's cluster's
        self.seaweedfs = seaweedfs
        self.etcds: dict[str, EtcdCluster] = {}
        self.backup_ids: dict[str, object] = {}

    def storage_block(self, name: str, relay: TCPProxy | None) -> str:
        """Save an S3 storage block on the module's bucket (through a relay when given)."""
        endpoint = f"http://127.0.0.1:{relay.port}" if relay else self.seaweedfs.endpoint
        S3Block(
            endpoint_url=endpoint,
            bucket=self.bucket,
            prefix="backups",
            access_key_id=self.seaweedfs.access_key,
            secret_access_key=self.seaweedfs.secret_key,
        ).save(name, overwrite=True)
        return f"s3-storage/{name}"

    def config(self, ticks: list[datetime]) -> Path:
        """backups.toml: every cluster on the same cron minutes; c00 stores through the relay."""
        minutes = ",".join(str(t.minute) for t in ticks)
        text = f"[limits]\nbackups_at_once = {AT_ONCE}\n"
        for name in self.names:
            storage = "s3-storage/scale-relayed" if name == "c00" else "s3-storage/scale"
            text += (
                f'\n[[backup]]\ncluster = "{name}"\nstorage = "{storage}"\ncron = "{minutes} * * * *"\n'
                'keep = 10\nverify_cron = "none"\n'
            )
        path = self.tmp / "backups.toml"
        path.write_text(text)
        return path

    def schedule(self, count: int) -> list[datetime]:
        """Deploy every cluster's backup on the next `count` whole minutes (updated in place); return those ticks."""
        while True:
            began = now()
            ticks = [first_tick_after(began + DEPLOY) + timedelta(minutes=k) for k in range(count)]
            output = deploy_backups(self.cluster, self.config(ticks))
            if ticks[0] - now() >= timedelta(seconds=LEAD_SECONDS):  # else deployed too late: again
                break
        self.backup_ids = deployment_ids(self.cluster, "etcd-backup", self.names)
        print(f"\n{output}deployed in {(now() - began).total_seconds():.1f} s; ticks "
              f"{', '.join(f'{t:%H:%M}' for t in ticks)}")  # fmt: skip
        return ticks

    def backups_before(self, name: str, moment: datetime) -> list:
        """The listed backups of a cluster taken before moment."""
        return [b for b in list_backups(self.store, cluster_id(name)) if b.time < moment]

    def backups_during(self, name: str, first, last) -> list:
        """The listed backups of a cluster named for a second from the start of run `first` to the end of `last`."""
        start = first.start_time - timedelta(microseconds=first.start_time.microsecond)  # names keep whole seconds
        return [b for b in list_backups(self.store, cluster_id(name)) if start <= b.time <= last.end_time]


def now() -> datetime:
    return datetime.now(UTC)


def cluster_id(name: str) -> str:
    return f"uk8s-scale-{name}"


def first_tick_after(moment: datetime) -> datetime:
    """The first whole minute at least LEAD_SECONDS after moment."""
    return (moment + timedelta(seconds=LEAD_SECONDS + 59)).replace(second=0, microsecond=0)


@pytest.fixture(scope="module")
def scale(prefect_cluster, seaweedfs, fleet_pki, tmp_path_factory):
    """20 filled one-member etcd clusters and their blocks; `schedule` deploys their backups on the next ticks."""
    tmp = tmp_path_factory.mktemp("scale")
    setup = Scale(prefect_cluster, seaweedfs, tmp)
    with contextlib.ExitStack() as stack, prefect_cluster.settings():
        stack.callback(setup.relay.stop)
        stack.callback(setup.lock_relay.stop)
        with ThreadPoolExecutor(4) as pool:
            started = pool.map(lambda _: start(EtcdCluster(tmp / secrets.token_hex(3), fleet_pki, 1), stack), range(20))
            setup.etcds = dict(zip(setup.names, started, strict=True))
        setup.storage_block("scale", None)
        setup.storage_block("scale-relayed", setup.relay)
        for name, etcd in setup.etcds.items():
            client = etcd.client(0)
            for k in range(100):  # ~300 KB that does not compress: an upload long enough to stop half way
                client.put(f"/registry/configmaps/scale/{name}-{k}", os.urandom(3000))
            client.close()
            ClusterBlock(
                cluster_id=cluster_id(name),
                endpoints=etcd.endpoints,
                ca_pem=Path(etcd.ca).read_text(),
                cert_pem=Path(etcd.cert).read_text(),
                key_pem=Path(etcd.key).read_text(),
            ).save(name, overwrite=True)
        yield setup
        with prefect_cluster.client() as c:
            for deployment_id in setup.backup_ids.values():
                c.pause_deployment(deployment_id)  # also deletes the runs scheduled for later ticks


def start_run(flow_and_name: str, **parameters):
    """Create a flow run of a deployment without waiting for it."""
    return run_deployment(flow_and_name, parameters=parameters, timeout=0)


def finished_runs(cluster, flow_name: str) -> list:
    """Every finished run of a flow so far (the ticks', the restore-lock test's, manual ones)."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with cluster.client() as c:
        runs = c.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])), limit=200)
    return [r for r in runs if r.start_time and r.end_time]


def state_of(cluster, run_id):
    with cluster.client() as c:
        return c.read_flow_run(run_id)


@pytest.mark.root
@pytest.mark.fleet
def test_a_restore_waits_for_the_running_backup_of_its_cluster_and_a_backup_during_a_restore_is_skipped(
    scale, prefect_cluster, make_fleet, tmp_path
):
    """A restore of X started while X's backup uploads waits, then restores that very backup; meanwhile no skip."""
    fleet = make_fleet()
    with fleet.client() as client:
        for k in range(100):
            client.put(f"/registry/secrets/lock/{k}", os.urandom(3000))
        data = {m.key: v for v, m in client.get_all()}
    with prefect_cluster.settings():
        save_cluster_block(fleet, "uk8s-scale-lock", "fleetx")
        scale.storage_block("fleetx", scale.lock_relay)
        config = tmp_path / "fleetx.toml"
        config.write_text(
            '[[backup]]\ncluster = "fleetx"\nstorage = "s3-storage/fleetx"\ncron = "0 0 1 1 *"\nverify_cron = "none"\n'
        )
        deploy(prefect_cluster, config)  # the real command, every deployment of the entry, beside the 20 clusters'
        stall = Stall(scale.lock_relay)
        backup = start_run("etcd-backup/fleetx")
        stall.wait()
        restore = start_run("etcd-restore-cluster/fleetx", force=True)  # asks for the typed name, holding the lock
        prefect_cluster.wait_for(
            lambda: "taking lock etcd-cluster-fleetx" in run_logs(prefect_cluster, restore.id),
            600,
            "the restore to wait",
        )
        time.sleep(3)
        assert state_of(prefect_cluster, backup.id).state.type == StateType.RUNNING
        assert task_runs(prefect_cluster, [restore.id]) == []  # it waits and has done nothing
        stall.go.set()
        paused = prefect_cluster.wait_for(
            lambda: state_of(prefect_cluster, restore.id).state.type == StateType.PAUSED, 600, "the confirmation"
        )
        assert paused
        skipped = wait_terminal(prefect_cluster, [start_run("etcd-backup/fleetx").id], 600)[0]
        resume_flow_run(restore.id, run_input={"cluster_name": "uk8s-scale-lock"})
        backup, restore = wait_terminal(prefect_cluster, [backup.id, restore.id], 600)

    assert (backup.state.name, restore.state.name) == ("Completed", "Completed"), (backup.state, restore.state)
    first_step = min(t.start_time for t in task_runs(prefect_cluster, [restore.id]) if t.start_time)
    assert restore.start_time < backup.end_time <= first_step  # it was running, and it waited
    [made] = list_backups(scale.store, "uk8s-scale-lock")
    told = f"restored from {made.key}"  # the backup it waited for (its last log lines come after its final state)
    assert prefect_cluster.wait_for(lambda: told in run_logs(prefect_cluster, restore.id), 30, "the restore's log")
    assert_restorable(scale.store, "uk8s-scale-lock", [made.key], tmp_path)
    fleet.wait_healthy(60)
    with fleet.client() as client:
        assert {m.key: v for v, m in client.get_all()} == data
    assert (skipped.state.type, skipped.state.name) == (StateType.COMPLETED, "Skipped")
    assert skipped.state.message.startswith("Backup of fleetx skipped: a restore of fleetx is running (etcd-restore")
    assert task_runs(prefect_cluster, [skipped.id]) == []
    assert prefect_cluster.active_slots("etcd-cluster-fleetx") == 0
    print(f"\nskipped: {skipped.state.message}")


@dataclass
class Timeline:
    """Two ticks of the 20 clusters with a worker killed between them, as the `ticks` fixture saw them."""

    first: dict  # deployment id -> flow run of the first tick (both workers online)
    second: dict  # ... of the second tick, deployed after the kill (one worker left)
    killed: object  # the c00 run whose worker was killed mid-upload, once it ended
    victim: str
    survivor: str
    started: datetime  # just before the killed run was created
    complete_before: list[str]  # c00's complete backups before the kill
    crashed_after: float  # seconds from the kill to the run's Crashed state


@pytest.fixture(scope="module")
def ticks(scale, prefect_cluster) -> Timeline:
    """A tick on both workers; then, the pool quiet, the worker running c00's upload SIGKILLed; then the next tick."""
    with prefect_cluster.settings():
        [tick] = scale.schedule(1)
    first = run_tick(prefect_cluster, scale, tick)  # once it is over no tick run is on a worker
    complete_before = [b.key for b in scale.backups_before("c00", now()) if b.complete]
    with prefect_cluster.settings():
        stall = Stall(scale.relay)
        started = now() - timedelta(seconds=1)
        killed = start_run("etcd-backup/c00")
        stall.wait()
    victim = prefect_cluster.wait_for(lambda: worker_of(prefect_cluster, killed.id), 300, "the run's worker")
    killed_at = time.monotonic()
    prefect_cluster.kill_worker(victim)
    stall.go.set()
    with prefect_cluster.settings():
        [tick] = scale.schedule(1)  # the next tick
    [killed] = wait_terminal(prefect_cluster, [killed.id], 600)
    crashed_after = time.monotonic() - killed_at
    second = run_tick(prefect_cluster, scale, tick)
    survivor = next(w for w in prefect_cluster.workers if w != victim)
    return Timeline(first, second, killed, victim, survivor, started, complete_before, crashed_after)


def run_tick(cluster, scale: Scale, tick: datetime) -> dict:
    """Wait for the 20 runs of a tick to be created and to finish; deployment id -> run."""
    ids = list(scale.backup_ids.values())
    found = cluster.wait_for(lambda: len(r := runs_at(cluster, ids, tick)) == CLUSTERS and r, 600, f"runs at {tick}")
    return {r.deployment_id: r for r in wait_terminal(cluster, [r.id for r in found], 900)}


def test_two_ticks_of_20_clusters_on_one_cron_minute_give_each_two_good_backups_within_the_limits(
    ticks, scale, prefect_cluster, tmp_path
):
    """Both ticks: every run completes, two good backups per cluster, no overlap per cluster, never over the limit."""
    runs = [*ticks.first.values(), *ticks.second.values()]
    assert {r.state.name for r in runs} == {"Completed"}, [(r.name, r.state.name, r.state.message) for r in runs]
    for name, deployment_id in scale.backup_ids.items():
        listed = scale.backups_during(name, ticks.first[deployment_id], ticks.second[deployment_id])
        good = [b for b in listed if b.complete]
        assert len(good) == 2, (name, listed)
        assert_restorable(scale.store, cluster_id(name), [b.key for b in good], tmp_path)
    by_deployment: dict = {}
    for r in [*runs, ticks.killed]:
        by_deployment.setdefault(r.deployment_id, []).append((r.start_time, r.end_time))
    assert all(max_overlap(spans) == 1 for spans in by_deployment.values())
    windows = work_windows(prefect_cluster, [r.id for r in finished_runs(prefect_cluster, "etcd-backup")])
    assert {r.id for r in runs} <= set(windows)  # every tick run's work is in the limit check
    assert max_overlap(windows.values()) <= AT_ONCE
    workers = {worker_of(prefect_cluster, r.id) for r in ticks.first.values()}
    assert workers == {"worker-1", "worker-2"}, workers
    spans = sorted((r.end_time - r.start_time).total_seconds() for r in runs)
    print(f"\n{len(runs)} runs; the first tick on {sorted(workers)}; at most {max_overlap(windows.values())} "
          f"working at once (limit {AT_ONCE}); run wall time "
          f"{spans[0]:.1f}..{spans[len(spans) // 2]:.1f}..{spans[-1]:.1f} s (min..median..max)")  # fmt: skip


def test_a_worker_killed_mid_backup_leaves_a_crashed_run_and_no_partial_backup_and_the_next_tick_runs_on_the_other(
    ticks, scale, prefect_cluster
):
    """SIGKILL the worker running c00's upload: Crashed, nothing partial listed, the next tick completes everywhere."""
    crashed = ticks.killed
    assert crashed.state.type == StateType.CRASHED and "heartbeat" in crashed.state.message, crashed.state
    next_run = ticks.second[scale.backup_ids["c00"]]
    listed = [b for b in list_backups(scale.store, cluster_id("c00")) if b.time < next_run.start_time]
    # nothing partial passes for a backup: S3 may have stored the killed run's object (its body was sent) but its
    # manifest never came, so it is listed as incomplete (never restored, never counted, swept by retention later)
    partial = [b for b in listed if not b.complete]
    assert len(partial) <= 1 and all(b.manifest is None and b.time >= ticks.started for b in partial), listed
    assert [b.key for b in listed if b.complete] == ticks.complete_before  # and nothing lost
    done = list(ticks.second.values())
    assert {r.state.name for r in done} == {"Completed"}, [(r.name, r.state.name, r.state.message) for r in done]
    assert {worker_of(prefect_cluster, r.id) for r in done} == {ticks.survivor}
    assert prefect_cluster.workers[ticks.victim].poll() is not None  # still dead: nothing else could have run them
    for name, deployment_id in scale.backup_ids.items():
        run = ticks.second[deployment_id]
        made = scale.backups_during(name, run, run)
        assert len(made) == 1 and made[0].complete, (name, made)
    print(f"\nkilled {ticks.victim}: run Crashed {ticks.crashed_after:.0f} s later ({crashed.state.message}); "
          f"the next tick completed on {ticks.survivor} for all {CLUSTERS} clusters")  # fmt: skip
