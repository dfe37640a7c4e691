"""Benchmark: the etcd-restore-cluster flow (through a real Prefect server) vs the runbook's way, node after node.

Run as root from the project root:
    FLEET_NET=120 .venv/bin/python -m bench.restore_bench --size-mb 512 [--before /path/to/other/checkout]
It starts a 3-node fleet (etcd 3.5.1 unless --version), fills etcd to about the size, backs it up (zstd) to
a local directory, starts a local Prefect server and saves the blocks. Then, per round, it makes the cluster
lose quorum (two members failed) and times from "backup in storage" to "every member healthy":
  (a) the flow of this checkout, `restore_cluster(..., confirm=True)`, in a fresh process; only the flow call
      is timed (facts, fetch + verify, plan, every step as a task run, checks); with the snapshot sent
      zstd-compressed and, as (a raw), uncompressed;
  (b) with --before: the same flow call of another checkout (e.g. the commit before this change);
  (c) the runbook's way on the same fleet: fetch the backup once, then per node in turn: stop etcd, move the
      data dir aside, copy the snapshot over, `etcdutl|etcdctl snapshot restore`; then start all.
Each run ends with every key present (checked by count). One JSON line per round.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prefect.settings import PREFECT_API_URL, temporary_settings  # noqa: E402

from blocks import EtcdCluster, LocalStorage  # noqa: E402
from deployments.local_server import LocalPrefectServer  # noqa: E402
from etcd_backup import catalog, etcd, pipeline  # noqa: E402
from etcd_backup.cluster import ClusterSpec  # noqa: E402
from etcd_backup.nodes import nodes_of  # noqa: E402
from etcd_backup.restore import checks, source  # noqa: E402
from etcd_backup.storage.local import LocalStorage as LocalStore  # noqa: E402
from tests.fleet import fleet_net  # noqa: E402
from tests.fleet.data import fill  # noqa: E402
from tests.fleet.nodes import Fleet  # noqa: E402
from tests.fleet.pki import make_pki  # noqa: E402

CLUSTER_ID = "uk8s-bench"
FLOW_CALL = """
import json, sys, time
sys.path.insert(0, {checkout!r})
import etcd_backup
assert etcd_backup.__file__.startswith({checkout!r}), etcd_backup.__file__
from flows.restore_cluster import restore_cluster
t0 = time.monotonic()
result = restore_cluster(cluster="bench", storage="local-directory-storage/bench", confirm=True)
seconds = time.monotonic() - t0
print("RESULT " + json.dumps({{"seconds": seconds, "keys": [v["keys"] for v in result["data"].values()]}}))
"""


def access_of(spec: ClusterSpec) -> etcd.EtcdAccess:
    return etcd.EtcdAccess(
        tuple(spec.endpoints), ca=spec.ca_pem, cert=spec.cert_pem, key=spec.key_pem.get_secret_value(), timeout=10
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def flow_run(checkout: Path, env: dict, reports: Path) -> dict:
    """Time the flow call of one checkout in a fresh process; the slowest node per phase from its journal."""
    out = subprocess.run(
        [sys.executable, "-c", FLOW_CALL.format(checkout=str(checkout))],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if os.environ.get("BENCH_LOG"):
        Path(os.environ["BENCH_LOG"]).write_text(out.stdout + out.stderr)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"the flow of {checkout} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    result = json.loads(lines[-1][7:])
    phases: dict[str, float] = {}
    for journal in reports.glob("*.jsonl"):
        for line in journal.read_text().splitlines():
            event = json.loads(line)
            if event["event"] == "end":
                phases[event["phase"]] = max(phases.get(event["phase"], 0.0), event["seconds"])
        journal.unlink()
    return {"seconds": round(result["seconds"], 2), "keys": result["keys"][0], "phases": phases}


def runbook_way(spec: ClusterSpec, storage: LocalStore, workdir: Path, run_id: str, tool: str) -> dict:
    """Fetch once, then per node in turn: stop, set aside, copy the snapshot, snapshot restore; start all."""
    t0 = time.monotonic()
    chosen = source.choose_backup(catalog.list_backups(storage, CLUSTER_ID), CLUSTER_ID).backup
    pipeline.fetch_snapshot(storage, chosen, workdir / "runbook.db")
    nodes = nodes_of(spec)
    token = f"runbook-{run_id}"
    for node, member in zip(nodes, spec.nodes, strict=True):
        node.run("systemctl stop etcd")
        node.run(f"mv /var/lib/etcd /var/lib/etcd.runbook-{run_id} && mkdir /var/lib/etcd")
        node.put_file(str(workdir / "runbook.db"), "/root/runbook.db", timeout=3600)
        api = "ETCDCTL_API=3 " if tool == "etcdctl" else ""
        node.run(
            f"{api}/usr/bin/{tool} snapshot restore /root/runbook.db --name={member.name} "
            f"--initial-cluster={shlex.quote(spec.initial_cluster())} --initial-cluster-token={token} "
            f"--initial-advertise-peer-urls={spec.peer_url(member)} --data-dir=/var/lib/etcd/default.etcd",
            timeout=3600,
        )
    threads = [
        threading.Thread(target=n.run, args=("systemctl enable --now etcd",), kwargs={"timeout": 600}) for n in nodes
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    access = access_of(spec)
    checks.wait_healthy(access, 300)
    keys = next(iter(checks.count_data(access).values()))["keys"]
    seconds = time.monotonic() - t0
    for node in nodes:
        node.run("rm -f /root/runbook.db")
        node.close()
    (workdir / "runbook.db").unlink()
    return {"seconds": round(seconds, 2), "keys": keys}


def run(size_mb: int, value_kb: int, version: str, before: Path | None, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="restore-bench-") as tmp:
        workdir = Path(tmp)
        fleet = Fleet(workdir / "fleet", make_pki(workdir / "pki", fleet_net()), 3, version)
        server = LocalPrefectServer(workdir / "prefect", port=free_port())
        try:
            fleet.start()
            with fleet.client(timeout=60) as client:
                fill(client, size_mb * (1 << 20) // (value_kb * 1024), value_kb * 1024)
            spec = fleet.spec(CLUSTER_ID)
            storage = LocalStore(workdir / "backups")
            record = pipeline.backup(access_of(spec), storage, cluster_id=CLUSTER_ID)
            server.start()
            with temporary_settings({PREFECT_API_URL: server.api_url}):
                EtcdCluster.from_spec(spec).save("bench", overwrite=True)
                LocalStorage(directory=str(workdir / "backups")).save("bench", overwrite=True)
            reports = workdir / "reports"
            env = {**server.env(), "ETCD_BACKUP_REPORT_DIR": str(reports), "ETCD_BACKUP_WORK_DIR": tmp}
            tool = "etcdutl" if version >= "3.5" else "etcdctl"
            for i in range(rounds):
                row: dict = {"round": i, "size_mb": size_mb, "raw_bytes": record.raw_size, "stored": record.size}
                fleet.lose_quorum("fail")
                row["a"] = flow_run(ROOT, env, reports)
                fleet.lose_quorum("fail")
                row["a_raw"] = flow_run(ROOT, {**env, "ETCD_BACKUP_WIRE": "raw"}, reports)
                if before:
                    fleet.lose_quorum("fail")
                    row["b_before"] = flow_run(before, env, reports)
                fleet.lose_quorum("fail")
                row["c_runbook"] = runbook_way(spec, storage, workdir, f"r{i}", tool)
                c = row["c_runbook"]["seconds"]
                row["a/c"] = round(row["a"]["seconds"] / c, 2)
                row["a_raw/c"] = round(row["a_raw"]["seconds"] / c, 2)
                if before:
                    row["b/c"] = round(row["b_before"]["seconds"] / c, 2)
                    row["a/b"] = round(row["a"]["seconds"] / row["b_before"]["seconds"], 2)
                print(json.dumps(row), flush=True)
        finally:
            server.stop()
            fleet.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=512, help="database size to build")
    parser.add_argument("--value-kb", type=int, default=8, help="size of each Kubernetes-like value")
    parser.add_argument("--version", default="3.5.1", choices=["3.5.1", "3.4.23"], help="etcd version of the fleet")
    parser.add_argument("--before", type=Path, help="another checkout whose flow is timed in the same rounds")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (a), (a raw), (b), (c)")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    run(args.size_mb, args.value_kb, args.version, args.before, args.rounds)


if __name__ == "__main__":
    main()
