"""`python -m deployments deploy` against a real Prefect server: every deployment on a pool, updated in place."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest

from tests.waiting import wait_until

pytestmark = [pytest.mark.operator, pytest.mark.slow]

ENTRY = '[[backup]]\ncluster = "{cluster}"\nstorage = "local-directory-storage/dep"\ncron = "{cron}"\n'


def _deploy(server, config, *extra: str, pool: str = "dep-pool") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deployments", "deploy", "--config", str(config), "--pool", pool, *extra],
        env=server.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_deploy_creates_every_deployment_on_a_pool_updates_in_place_refuses_others_and_lists_stale(
    local_prefect_server, tmp_path
):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from blocks import EtcdCluster, LocalStorage

    server = local_prefect_server
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        for name in ("dep-a", "dep-b"):
            EtcdCluster(cluster_id=f"uk8s-{name}", ca_pem="ca", cert_pem="c", key_pem="k").save(name, overwrite=True)
        LocalStorage(directory=str(tmp_path / "store")).save("dep", overwrite=True)
        config = tmp_path / "backups.toml"
        config.write_text(
            "[limits]\nbackups_at_once = 3\n\n"
            + ENTRY.format(cluster="dep-a", cron="0 1 * * *")
            + "continuous = true\n"
            + ENTRY.format(cluster="dep-b", cron="0 2 * * *")
        )
        first = _deploy(server, config)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "work pool dep-pool created (type process)" in first.stdout
        assert "16 deployment(s) created or updated on work pool dep-pool" in first.stdout
        with get_client(sync_client=True) as client:
            backup = client.read_deployment_by_name("etcd-backup/dep-a")
            assert (backup.work_pool_name, backup.entrypoint) == ("dep-pool", "flows.backup.backup_etcd")
            assert backup.global_concurrency_limit.limit == 1 and set(backup.tags) == {"etcd-backup", "cluster:dep-a"}
            assert [s.schedule.cron for s in backup.schedules] == ["0 1 * * *"]
            follower = client.read_deployment_by_name("etcd-continuous-backup/dep-a")
            assert follower.entrypoint == "flows.continuous.continuous_backup"
            assert follower.parameters["run_minutes"] == 10
            assert [s.schedule.cron for s in follower.schedules] == ["*/10 * * * *"]
            by_hand = client.read_deployment_by_name("etcd-continuous-backup/dep-b")
            assert by_hand.schedules == [] and "run_minutes" not in by_hand.parameters
            restore = client.read_deployment_by_name("etcd-restore-member/dep-b")
            assert restore.work_pool_name == "dep-pool" and restore.parameters == {"cluster": "dep-b"}
            assert (restore.work_queue_name, backup.work_queue_name) == ("by-hand", "default")
            queues = sorted(client.read_work_queues(work_pool_name="dep-pool"), key=lambda q: q.priority)
            assert [(q.name, q.priority) for q in queues] == [("by-hand", 1), ("default", 2)]
            assert client.read_global_concurrency_limit_by_name("etcd-backup-transfers").limit == 3
            assert client.read_global_concurrency_limit_by_name("etcd-cluster-dep-b").limit == 1

        # the same file changed: updated in place; the dropped cluster's deployments are listed as stale
        config.write_text(ENTRY.format(cluster="dep-a", cron="30 1 * * *"))
        again = _deploy(server, config)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "stale: etcd-backup/dep-b is no longer in" in again.stdout
        with get_client(sync_client=True) as client:
            assert [s.schedule.cron for s in client.read_deployment_by_name("etcd-backup/dep-a").schedules] == [
                "30 1 * * *"
            ]
            assert client.read_global_concurrency_limit_by_name("etcd-backup-transfers").limit == 4  # the default

        # another file with the same cluster and another schedule: refused, nothing changed
        other = tmp_path / "other.toml"
        other.write_text(ENTRY.format(cluster="dep-a", cron="0 5 * * *"))
        refused = _deploy(server, other)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "deployment etcd-backup/dep-a already exists, deployed by `python -m deployments deploy`" in (
            refused.stderr
        )
        assert "schedule '30 1 * * *' UTC -> '0 5 * * *' UTC" in refused.stderr and "Traceback" not in refused.stderr

        removed = _deploy(server, config, "--remove-stale")
        assert removed.returncode == 0 and "removed etcd-backup/dep-b" in removed.stdout, removed.stdout
        with get_client(sync_client=True) as client:
            names = {d.name for d in client.read_deployments(limit=200)}
        assert "dep-a" in names and "dep-b" not in names


def test_a_run_started_by_hand_starts_before_backups_queued_ahead_of_it(local_prefect_server, tmp_path):
    """One worker slot, three backups waiting since a minute, then a run by hand: the worker takes that one first."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Cancelled, Scheduled

    from blocks import EtcdCluster, LocalStorage

    server = local_prefect_server
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        EtcdCluster(cluster_id="uk8s-dep-q", ca_pem="ca", cert_pem="c", key_pem="k").save("dep-q", overwrite=True)
        LocalStorage(directory=str(tmp_path / "store")).save("dep-q", overwrite=True)
        config = tmp_path / "backups.toml"
        config.write_text(ENTRY.format(cluster="dep-q", cron="0 3 1 1 *").replace("/dep", "/dep-q"))
        deployed = _deploy(server, config, pool="first-pool")
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        assert "go to work queue by-hand: taken first" in deployed.stdout
        with get_client(sync_client=True) as client:
            backup = client.read_deployment_by_name("etcd-backup/dep-q")
            listing = client.read_deployment_by_name("etcd-list-backups/dep-q")
            waiting = Scheduled(scheduled_time=datetime.now(UTC) - timedelta(minutes=1))
            backups = [client.create_flow_run_from_deployment(backup.id, state=waiting.model_copy()) for _ in range(3)]
            by_hand = client.create_flow_run_from_deployment(listing.id)
        worker = _worker(server, "first-pool", tmp_path / "worker.log")
        try:
            with get_client(sync_client=True) as client:
                listed = wait_until(lambda: _final(client.read_flow_run(by_hand.id)), "the run by hand", 180, 1, worker)
                first = wait_until(
                    lambda: [r for r in _reread(client, backups) if r.start_time], "a backup", 180, 1, worker
                )
        finally:
            _kill_tree(worker)
            with get_client(sync_client=True) as client:
                for run in backups:
                    client.set_flow_run_state(run.id, Cancelled(), force=True)
    log = (tmp_path / "worker.log").read_text()[-3000:]
    assert listed.state.is_completed(), log
    assert all(r.start_time > listed.end_time for r in first), log  # none while the run by hand held the one slot


def _worker(server, pool: str, log: Path) -> subprocess.Popen:
    env = {**server.env(), "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PREFECT_WORKER_QUERY_SECONDS": "2"}
    cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--limit", "1", "--name", "first"]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def _final(run):
    return run if run.state and run.state.is_final() else None


def _reread(client, runs: list) -> list:
    return [client.read_flow_run(run.id) for run in runs]


def _kill_tree(process: subprocess.Popen) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        tree = psutil.Process(process.pid)
        for victim in [tree, *tree.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                victim.kill()
    process.wait()
