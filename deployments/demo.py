"""The README's first command: a local Prefect server, three etcd master nodes, blocks, every flow served.

Everything lives under .demo/ in the checkout (or --dir); one demo per directory. The Prefect
database and the backups are kept between runs (`--fresh` deletes them); the cluster is rebuilt
at each start. Ctrl-C stops everything this started. As root the cluster is three master nodes
built like the test fleet (sshd + etcd under systemctl on 127.0.N.11-13), so every flow works,
restores included; otherwise it is three plain etcd processes and the restore flows cannot run.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from contextlib import ExitStack
from pathlib import Path

from deployments.demo_instance import DemoInstance
from etcd_backup.errors import ConfigError, EtcdBackupError

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
CLUSTER = "demo"
CLUSTER_ID = "uk8s-demo"
NOT_ROOT = (
    "demo: not root, so the cluster is three etcd processes without master nodes: backups, list, prune and the "
    "etcd health part of etcd-diagnose work; the restore flows and --break need the master nodes: run "
    "`sudo scripts/demo.sh` (mount namespaces and sshd on port 22 of 127.0.N.11-13 need root)"
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/demo.sh", description=__doc__.splitlines()[0])
    p.add_argument("--s3", action="store_true", help="back up to a local SeaweedFS S3 server")
    p.add_argument("--keys", type=int, default=5000, help="Kubernetes-like keys to write (2 KiB each)")
    p.add_argument("--port", type=int, default=4200, help="Prefect UI/API port on 127.0.0.1")
    p.add_argument("--dir", type=Path, default=DEMO, help="where the demo keeps its data (default .demo)")
    p.add_argument("--fresh", action="store_true", help="delete earlier demo data (backups, runs, blocks) first")
    p.add_argument("--break", dest="damage", choices=["quorum", "member"], help="break the running demo's cluster")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the demo until Ctrl-C (or, with --break, ask the running demo to break its cluster)."""
    args = _parser().parse_args(argv)
    os.umask(0o077)
    instance = DemoInstance(args.dir)
    try:
        if args.damage:
            print(instance.request_break(args.damage), flush=True)
            return 0
        instance.acquire()
        if args.fresh:
            instance.wipe()
        instance.publish(ui=f"http://127.0.0.1:{args.port}", api_url=f"http://127.0.0.1:{args.port}/api")
        signal.signal(signal.SIGTERM, _interrupt)
        return _demo(instance, args)
    except ConfigError as exc:
        print(f"demo: error: {exc.message}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("demo: stopped")
        return 0


def _demo(instance: DemoInstance, args) -> int:
    from deployments.local_server import LocalPrefectServer

    with ExitStack() as stack:
        server = LocalPrefectServer(
            instance.dir / "prefect",
            port=args.port,
            auth_string=instance.auth_string(),
            encryption_key=instance.encryption_key(),
        )
        print(f"demo: starting Prefect server on http://127.0.0.1:{args.port} ...", flush=True)
        server.start()
        stack.callback(server.stop)
        os.environ.update({k: v for k, v in server.env().items() if k.startswith(("PREFECT_", "DO_NOT"))})
        fleet = _cluster(stack, instance.dir / "run", args.keys)
        storage = _storage_block(stack, instance.dir, args.s3)
        server.secure_files()
        if fleet is not None:
            _watch_break_requests(stack, instance, fleet)
        return _run(storage, server, instance, fleet is not None)
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _cluster(stack: ExitStack, run_dir: Path, keys: int):
    """Save the `demo` EtcdCluster block: three master nodes as root (returns the Fleet), else three etcd processes."""
    import shutil

    from blocks import EtcdCluster
    from tests.fleet import fleet_net
    from tests.fleet.data import fill
    from tests.fleet.pki import make_pki

    shutil.rmtree(run_dir, ignore_errors=True)  # the cluster of an earlier demo: processes gone, rebuilt below
    pki = make_pki(run_dir / "pki", fleet_net())
    if os.geteuid() == 0:
        from tests.fleet.nodes import Fleet

        print("demo: starting three etcd master nodes (sshd + etcd 3.5.1, TLS) on 127.0.N.11-13 ...", flush=True)
        cluster = Fleet(run_dir / "fleet", pki, 3, "3.5.1")
        stack.callback(cluster.stop)
        cluster.start()
        block = EtcdCluster.from_spec(cluster.spec(CLUSTER_ID))
    else:
        from tests.fleet.etcd_cluster import EtcdCluster as EtcdProcesses

        print(NOT_ROOT, flush=True)
        cluster = EtcdProcesses(run_dir / "etcd", pki, 3, "3.5.1")
        stack.callback(cluster.stop)
        cluster.start()
        block = EtcdCluster(
            cluster_id=CLUSTER_ID,
            endpoints=cluster.endpoints,
            ca_pem=cluster.ca.read_text(),
            cert_pem=cluster.cert.read_text(),
            key_pem=cluster.key.read_text(),
        )
    client = cluster.client()
    fill(client, keys, 2048)
    client.close()
    block.save(CLUSTER, overwrite=True)
    return cluster if os.geteuid() == 0 else None


def _storage_block(stack: ExitStack, demo_dir: Path, s3: bool) -> str:
    """Save the demo storage block (local directory, or a local SeaweedFS S3) and return its reference."""
    from blocks import LocalStorage, S3Storage

    if not s3:
        LocalStorage(directory=str(demo_dir / "backups")).save(CLUSTER, overwrite=True)
        return f"{LocalStorage.get_block_type_slug()}/{CLUSTER}"
    from tests.servers.seaweedfs import SeaweedFS

    weed = SeaweedFS(str(demo_dir / "seaweedfs"))
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


def _watch_break_requests(stack: ExitStack, instance: DemoInstance, fleet) -> None:
    """A thread that carries out `scripts/demo.sh --break quorum|member` on the fleet."""
    stop = threading.Event()
    stack.callback(stop.set)

    def watch() -> None:
        while not stop.wait(0.5):
            what = instance.take_break_request()
            if what:
                instance.answer_break(_break(fleet, what))

    threading.Thread(target=watch, name="demo-break", daemon=True).start()


def _break(fleet, what: str) -> str:
    """Crash members like a real outage; returns what to run next."""
    if what == "quorum":
        lost = fleet.lose_quorum("fail")
        names = " and ".join(n.name for n in lost)
        return (
            f"demo: quorum lost: etcd on {names} crashed and their data is damaged. In the UI run "
            f"etcd-diagnose/{CLUSTER}, then etcd-restore-cluster/{CLUSTER} (dry_run first; then confirm by typing "
            f"{CLUSTER_ID})"
        )
    node = fleet.nodes[-1]
    fleet.fail_member(node)
    return (
        f"demo: member {node.name} failed (etcd crashed, data damaged); quorum kept. In the UI run "
        f"etcd-diagnose/{CLUSTER}, then etcd-restore-member/{CLUSTER} with failed_node={node.name}"
    )


def _run(storage: str, server, instance: DemoInstance, nodes: bool) -> int:
    from deployments.config import BackupSchedule
    from deployments.serve import all_deployments, owner, served_by
    from flows.backup import backup_etcd

    schedule = BackupSchedule(cluster=CLUSTER, storage=storage, cron="* * * * *", keep=5)
    print("demo: first backup now ...", flush=True)
    try:
        record = backup_etcd(**schedule.parameters())
        print(f"\ndemo: backup stored: {record.key} ({record.size} bytes, revision {record.revision})")
    except EtcdBackupError as exc:
        print(f"demo: the first backup failed: {exc}", file=sys.stderr)
    deployments = all_deployments([schedule], served_by(owner("the demo")))
    for deployment in deployments:  # registered before the banner says they can be run
        deployment.apply()
    (instance.dir / "env.sh").write_text(
        f"export PREFECT_API_URL={server.api_url}\nexport PREFECT_API_AUTH_STRING='{server.auth_string}'\n"
    )
    print(_banner(storage, server, instance, nodes), flush=True)
    from prefect import serve

    serve(*deployments, pause_on_shutdown=False)
    print("demo: stopped")
    return 0


def _banner(storage: str, server, instance: DemoInstance, nodes: bool) -> str:
    where = f" -> {instance.dir / 'backups'}" if storage.startswith("local") else ""
    restore = (
        "  break it:    scripts/demo.sh --break quorum   (or --break member), then restore from the UI\n"
        if nodes
        else "  restores:    need root (see above)\n"
    )
    return (
        f"\n  Prefect UI:  http://127.0.0.1:{server.port}  (it asks for the auth string below)\n"
        f"  flows:       etcd-backup/{CLUSTER} every minute (keep 5), etcd-list-backups, etcd-prune-backups, "
        f"etcd-diagnose, etcd-restore-cluster, etcd-restore-member (all /{CLUSTER})\n"
        f"  storage:     {storage}{where}\n{restore}"
        f"  CLI in another shell (also in {instance.dir / 'env.sh'}):\n"
        f"    export PREFECT_API_URL={server.api_url}\n"
        f"    export PREFECT_API_AUTH_STRING='{server.auth_string}'\n"
        f"    .venv/bin/prefect deployment run etcd-diagnose/{CLUSTER}\n"
        f"  Ctrl-C stops everything; data stays in {instance.dir} (--fresh starts over)\n"
    )


if __name__ == "__main__":
    sys.exit(main())
