"""Benchmark: backups per minute through a Prefect server on PostgreSQL and process workers, and what it costs.

Run from the project root:  FLEET_NET=30 .venv/bin/python -m bench.scale_bench --workers 1 2 --clusters 5 20
It starts a throwaway PostgreSQL, `prefect server start` on it, a process pool, SeaweedFS S3 and single-member
etcd 3.5.1 clusters (TLS, --size-kb of data each), deploys them with deployments.deploy (the `deploy` command),
then per (workers, clusters) starts one backup run per cluster at once and waits for all of them. Figures:
- backups/min: runs / (last run's end - first run's creation) x 60,
- Prefect overhead per backup: flow run wall time (start to end) minus its snapshot-to-storage task run
  (snapshot + compression + upload), median; the wait for a transfer slot (at most `--at-once`) is counted
  apart, from the same run's timeline (start of flow to start of its first task run),
- peak RSS of the server (with its children), each worker, the largest flow-run process,
- API requests per run: lines of the server's access log during the round / runs,
- side by side, the runbook's way for the same clusters without Prefect (etcdctl snapshot save, tar czf,
  boto3 upload), `--at-once` at a time: backups/min and the median wall time of one,
- a run by hand behind a queue: every cluster's backup started at once, then one etcd-list-backups run, on
  the pool's default queue (as before) and on the priority-1 `by-hand` queue `deploy` makes: the seconds from
  its creation to its start (`--by-hand-only` runs just this, with one worker).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fleet import fleet_net  # noqa: E402
from tests.fleet.etcd_cluster import EtcdCluster  # noqa: E402
from tests.fleet.pki import make_pki  # noqa: E402
from tests.scale_helpers import MemorySampler, deploy_backups, task_runs, wait_terminal  # noqa: E402
from tests.servers.postgres import PostgresServer  # noqa: E402
from tests.servers.prefect_cluster import PrefectCluster  # noqa: E402
from tests.servers.scale_fixtures import WORKER_LIMIT  # noqa: E402
from tests.servers.seaweedfs import SeaweedFS  # noqa: E402


def fill(cluster: EtcdCluster, size_kb: int) -> None:
    """Put size_kb of Kubernetes-like values (1 KiB each) into the cluster."""
    client = cluster.client(0)
    value = (b'{"kind":"ConfigMap","data":{"k":"' + b"x" * 990 + b'"}}')[:1024]
    for k in range(size_kb):
        client.put(f"/registry/configmaps/bench/cm-{k}", value)
    client.close()


def save_blocks(prefect: PrefectCluster, clusters: list[EtcdCluster], s3: SeaweedFS) -> list[str]:
    """An EtcdCluster block per cluster and one S3 storage block; return the cluster block names."""
    from blocks import EtcdCluster as ClusterBlock
    from blocks import S3Storage as S3Block

    bucket = s3.make_bucket()
    with prefect.settings():
        S3Block(
            endpoint_url=s3.endpoint,
            bucket=bucket,
            prefix="backups",
            access_key_id=s3.access_key,
            secret_access_key=s3.secret_key,
        ).save("bench", overwrite=True)
        names = []
        for i, cluster in enumerate(clusters):
            names.append(f"bench{i:02d}")
            ClusterBlock(
                cluster_id=f"uk8s-bench-{i:02d}",
                endpoints=cluster.endpoints,
                ca_pem=Path(cluster.ca).read_text(),
                cert_pem=Path(cluster.cert).read_text(),
                key_pem=Path(cluster.key).read_text(),
            ).save(names[-1], overwrite=True)
    return names


def deploy_all(prefect: PrefectCluster, names: list[str], at_once: int, workdir: Path) -> float:
    """Deploy every cluster's etcd-backup deployment as `deploy` does (build.py); return the seconds taken."""
    text = f"[limits]\nbackups_at_once = {at_once}\n" + "".join(
        f'\n[[backup]]\ncluster = "{n}"\nstorage = "s3-storage/bench"\ncron = "0 0 1 1 *"\nkeep = 3\n'
        'verify_cron = "none"\n'
        for n in names
    )
    config = workdir / "backups.toml"
    config.write_text(text)
    began = time.monotonic()
    with prefect.settings():
        deploy_backups(prefect, config, by="the scale bench")
    return time.monotonic() - began


def one_round(prefect: PrefectCluster, names: list[str]) -> dict:
    """Start one backup run per cluster at once, wait for all; return the round's figures."""
    from prefect.deployments import run_deployment

    sampler = MemorySampler(prefect)
    sampler.start()
    requests = prefect.request_count()
    began = datetime.now(UTC)
    with prefect.settings():
        ids = [run_deployment(f"etcd-backup/{n}", timeout=0).id for n in names]
    runs = wait_terminal(prefect, ids, 1800)
    peaks = sampler.stop()
    states = sorted({r.state.name for r in runs})
    tasks = task_runs(prefect, ids)
    overhead, waited = [], []
    for run in runs:
        mine = [t for t in tasks if t.flow_run_id == run.id and t.start_time and t.end_time]
        snapshot = [t for t in mine if t.name.startswith("snapshot-")]
        wall = (run.end_time - run.start_time).total_seconds()
        if snapshot and mine:
            first_task = min(t.start_time for t in mine)
            waited.append((first_task - run.start_time).total_seconds())
            overhead.append(wall - sum((t.end_time - t.start_time).total_seconds() for t in snapshot))
    seconds = (max(r.end_time for r in runs) - began).total_seconds()
    return {
        "states": states,
        "seconds": round(seconds, 1),
        "backups_per_min": round(len(runs) / seconds * 60, 1),
        "overhead_median_s": round(statistics.median(overhead), 2),
        "overhead_minus_slot_wait_median_s": round(statistics.median(map(float.__sub__, overhead, waited)), 2),
        "wall_median_s": round(statistics.median((r.end_time - r.start_time).total_seconds() for r in runs), 2),
        "api_requests_per_run": round((prefect.request_count() - requests) / len(runs), 1),
        "peak_rss_mib": peaks,
    }


def by_hand_round(prefect: PrefectCluster, names: list[str], queue: str) -> dict:
    """Start every backup at once, then a list run on `queue`; the seconds the list run waited to start."""
    from prefect.deployments import run_deployment

    from deployments.build import BY_HAND_QUEUE, MODULE, manual_deployments
    from deployments.config import BackupSchedule
    from deployments.deploy import ensure_first_queue
    from etcd_backup.flow_names import LIST_BACKUPS

    with prefect.settings():
        ensure_first_queue(prefect.pool, BY_HAND_QUEUE)
        schedule = BackupSchedule(cluster=names[0], storage="s3-storage/bench")
        [listing] = [d for d in manual_deployments([schedule], "", MODULE, queue) if d.flow_name == LIST_BACKUPS]
        listing.apply(work_pool_name=prefect.pool)
        backups = [run_deployment(f"etcd-backup/{n}", timeout=0).id for n in names]
        time.sleep(2)  # the backups are queued first
        by_hand = run_deployment(f"{LIST_BACKUPS}/{listing.name}", timeout=0).id
    [run] = wait_terminal(prefect, [by_hand], 1800)
    wait_terminal(prefect, backups, 1800)
    return {
        "queue": queue,
        "backups_queued": len(names),
        "state": run.state.name,
        "waited_to_start_s": round((run.start_time - run.created).total_seconds(), 1),
    }


def plain_round(clusters: list[EtcdCluster], s3: SeaweedFS, at_once: int, workdir: Path) -> dict:
    """The runbook's way for the same clusters, `at_once` at a time (a cron script with `xargs -P`), no Prefect."""
    from bench.backup_bench import runbook_way

    bucket = s3.make_bucket()
    began = time.monotonic()

    def one(i: int) -> float:
        return runbook_way(clusters[i], s3, bucket, workdir / f"plain{i}")[0]

    with ThreadPoolExecutor(at_once) as pool:
        walls = list(pool.map(one, range(len(clusters))))
    seconds = time.monotonic() - began
    return {
        "clusters": len(clusters),
        "seconds": round(seconds, 1),
        "backups_per_min": round(len(clusters) / seconds * 60, 1),
        "wall_median_s": round(statistics.median(walls), 2),
    }


def database_size(pg: PostgresServer) -> tuple[int, int]:
    """(bytes of the Prefect database, flow runs in it)."""
    rows = pg.psql("prefect_bench", "select pg_database_size('prefect_bench'), (select count(*) from flow_run)")
    size, runs = (int(x) for x in rows.strip().split("|"))
    return size, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--clusters", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--size-kb", type=int, default=512, help="data per cluster")
    parser.add_argument("--at-once", type=int, default=4, help="[limits] backups_at_once")
    parser.add_argument("--by-hand-only", action="store_true", help="only the run-by-hand rounds, one worker")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    results = []
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(PostgresServer())
        s3 = SeaweedFS(str(workdir / "s3")).start()
        stack.callback(s3.stop)
        prefect = PrefectCluster(workdir / "prefect", pg.create_database("prefect_bench"))
        stack.callback(prefect.stop)
        prefect.start(workers=min(args.workers), limit=WORKER_LIMIT)
        pki = make_pki(workdir / "pki", fleet_net())
        clusters = []
        for i in range(max(args.clusters)):
            clusters.append(EtcdCluster(workdir / f"etcd{i}", pki, 1, "3.5.1"))
            stack.callback(clusters[-1].stop)
            clusters[-1].start()
            fill(clusters[-1], args.size_kb)
        names = save_blocks(prefect, clusters, s3)
        deploy_seconds = deploy_all(prefect, names, args.at_once, workdir)
        print(json.dumps({"deploy_seconds": round(deploy_seconds, 1), "deployments": len(names)}), flush=True)
        baseline = database_size(pg)
        one_round(prefect, names[:1])  # warm-up: the first run imports everything once
        for queue in ("default", "by-hand"):
            print(json.dumps({"by_hand": by_hand_round(prefect, names[: max(args.clusters)], queue)}), flush=True)
        if args.by_hand_only:
            return
        for workers in sorted(args.workers):
            for i in range(len(prefect.workers) + 1, workers + 1):
                prefect.start_worker(f"worker-{i}", WORKER_LIMIT)
            prefect.wait_for(lambda w=workers: len(prefect.online_workers()) >= w, 120, f"{workers} workers online")
            for count in args.clusters:
                figures = {"workers": workers, "clusters": count, **one_round(prefect, names[:count])}
                print(json.dumps(figures), flush=True)
                results.append(figures)
        solo = one_round(prefect, names[:1])
        print(json.dumps({"solo": solo}), flush=True)
        for count in args.clusters:
            for i in range(count):
                (workdir / f"plain{i}").mkdir(exist_ok=True)
            print(json.dumps({"plain": plain_round(clusters[:count], s3, args.at_once, workdir)}), flush=True)
        size, runs = database_size(pg)
        grown = (size - baseline[0]) // max(runs - baseline[1], 1)
        print(json.dumps({"db_bytes": size, "flow_runs": runs, "db_bytes_per_backup_run": grown}), flush=True)


if __name__ == "__main__":
    main()
