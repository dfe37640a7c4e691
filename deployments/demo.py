"""The README's first command: a local Prefect server, a local 3-member etcd, blocks, a first backup, a schedule.

Everything lives under .demo/ in the checkout; Ctrl-C stops everything this started.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
CLUSTER = "demo"


def _start_etcd(stack: ExitStack, keys: int):
    """A 3-member etcd with TLS on 127.0.0.11-13, filled with Kubernetes-like data."""
    from tests.fleet import fleet_net
    from tests.fleet.data import fill
    from tests.fleet.etcd_cluster import EtcdCluster
    from tests.fleet.pki import make_pki

    pki = make_pki(DEMO / "pki", fleet_net())
    cluster = EtcdCluster(DEMO / "etcd", pki, 3, "3.5.1")
    stack.callback(cluster.stop)
    cluster.start()
    client = cluster.client()
    fill(client, keys, 2048)
    client.close()
    return cluster


def _storage_block(stack: ExitStack, s3: bool) -> str:
    """Save the demo storage block (local directory, or a local SeaweedFS S3) and return its reference."""
    from blocks import LocalStorage, S3Storage

    if not s3:
        LocalStorage(directory=str(DEMO / "backups")).save(CLUSTER, overwrite=True)
        return f"{LocalStorage.get_block_type_slug()}/{CLUSTER}"
    from tests.servers.seaweedfs import SeaweedFS

    weed = SeaweedFS(str(DEMO / "seaweedfs"))
    stack.callback(weed.stop)
    weed.start()
    bucket = weed.make_bucket("etcd-backups")
    S3Storage(
        endpoint_url=weed.endpoint,
        region="us-east-1",
        bucket=bucket,
        access_key_id=weed.access_key,
        secret_access_key=weed.secret_key,
    ).save(CLUSTER, overwrite=True)
    return f"{S3Storage.get_block_type_slug()}/{CLUSTER}"


def _cluster_block(cluster) -> None:
    from blocks import EtcdCluster

    EtcdCluster(
        cluster_id="uk8s-demo",
        endpoints=cluster.endpoints,
        ca_pem=cluster.ca.read_text(),
        cert_pem=cluster.cert.read_text(),
        key_pem=cluster.key.read_text(),
    ).save(CLUSTER, overwrite=True)


def main(argv: list[str] | None = None) -> int:
    """Run the demo until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m deployments.demo", description=__doc__)
    parser.add_argument("--s3", action="store_true", help="back up to a local SeaweedFS S3 server")
    parser.add_argument("--keys", type=int, default=5000, help="Kubernetes-like keys to write (2 KiB each)")
    parser.add_argument("--port", type=int, default=4200, help="Prefect UI/API port")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    shutil.rmtree(DEMO, ignore_errors=True)
    from deployments.local_server import LocalPrefectServer

    with ExitStack() as stack:
        server = LocalPrefectServer(DEMO / "prefect", port=args.port)
        stack.callback(server.stop)
        print(f"demo: starting Prefect server on http://127.0.0.1:{args.port} ...", flush=True)
        server.start()
        os.environ.update({k: v for k, v in server.env().items() if k.startswith(("PREFECT_", "DO_NOT"))})
        print("demo: starting a 3-member etcd (TLS) on 127.0.0.11-13 ...", flush=True)
        cluster = _start_etcd(stack, args.keys)
        _cluster_block(cluster)
        storage = _storage_block(stack, args.s3)
        return _run(storage, args.port)
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _run(storage: str, port: int) -> int:
    from deployments.config import BackupSchedule
    from deployments.serve import serve
    from flows.backup import backup_etcd

    schedule = BackupSchedule(cluster=CLUSTER, storage=storage, cron="* * * * *", keep=5)
    print("demo: first backup now ...", flush=True)
    record = backup_etcd(**schedule.parameters())
    print(f"\ndemo: backup stored: {record.key} ({record.size} bytes, revision {record.revision})")
    print(f"  Prefect UI:  http://127.0.0.1:{port}  (Runs, Deployments, Artifacts, Blocks)")
    print(f"  storage:     {storage}" + (f" -> {DEMO / 'backups'}" if storage.startswith("local") else ""))
    print("  schedule:    every minute, keep 5  (Ctrl-C stops everything)\n", flush=True)
    try:
        serve([schedule])
    except KeyboardInterrupt:
        pass
    print("demo: stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
