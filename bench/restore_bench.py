"""Benchmark: our whole-cluster restore (nodes in parallel) vs the runbook's way (one node after another).

Run as root from the project root:  FLEET_NET=120 .venv/bin/python -m bench.restore_bench --size-mb 512
It starts a 3-node fleet (etcd 3.5.1 unless --version), fills etcd to about the size, backs it up (zstd)
to a local directory, makes the cluster lose quorum (two members failed), then times from "backup in
storage" to "every member healthy":
  (a) ours: node facts, fetch + verify once, plan, then stop / set aside / upload / snapshot restore on
      every node in parallel, start all together, health and member checks, key count;
  (b) the runbook's way on the same fleet: fetch the backup once, then per node in turn: stop etcd, move
      the data dir aside, copy the snapshot over, `etcdutl|etcdctl snapshot restore`; then start all.
Both end with every key present (checked by count).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from etcd_backup import catalog, etcd, pipeline  # noqa: E402
from etcd_backup.cluster import ClusterSpec, MasterNode, SSHAccess  # noqa: E402
from etcd_backup.nodes import nodes_of  # noqa: E402
from etcd_backup.restore import checks, source  # noqa: E402
from etcd_backup.restore import facts as restore_facts  # noqa: E402
from etcd_backup.restore.executor import Executor  # noqa: E402
from etcd_backup.restore.plan import RestoreOptions, plan_cluster_restore  # noqa: E402
from etcd_backup.storage.local import LocalStorage  # noqa: E402
from tests.fleet import fleet_net  # noqa: E402
from tests.fleet.data import fill  # noqa: E402
from tests.fleet.nodes import Fleet  # noqa: E402
from tests.fleet.pki import make_pki  # noqa: E402

CLUSTER_ID = "uk8s-bench"


def spec_of(fleet: Fleet) -> ClusterSpec:
    pki = fleet.pki
    return ClusterSpec(
        cluster_id=CLUSTER_ID,
        endpoints=fleet.endpoints,
        ca_pem=pki.ca.read_text(),
        cert_pem=pki.cert.read_text(),
        key_pem=pki.key.read_text(),
        nodes=[MasterNode(name=n.name, ip=n.ip) for n in fleet.nodes],
        ssh=SSHAccess(user="root", private_key=fleet.ssh_private_key, known_hosts=fleet.known_hosts),
    )


def access_of(spec: ClusterSpec) -> etcd.EtcdAccess:
    return etcd.EtcdAccess(
        tuple(spec.endpoints), ca=spec.ca_pem, cert=spec.cert_pem, key=spec.key_pem.get_secret_value(), timeout=10
    )


def ours(spec: ClusterSpec, storage: LocalStorage, workdir: Path, run_id: str) -> dict:
    """The flow's core calls, without Prefect: facts, fetch + verify, plan, execute."""
    t0 = time.monotonic()
    facts = restore_facts.gather(spec)
    chosen = source.choose_backup(catalog.list_backups(storage, CLUSTER_ID), CLUSTER_ID)
    snapshot = source.fetch(storage, chosen, workdir / "ours.db")
    fetched = time.monotonic()
    plan = plan_cluster_restore(spec, facts, snapshot, None, f"bench-{run_id}", RestoreOptions(run_id=run_id))
    access = access_of(spec)
    run_checks = {
        "healthy": lambda t: checks.wait_healthy(access, t),
        "members": lambda t: checks.check_members(access, spec),
        "data": lambda t: checks.count_data(access),
    }
    nodes = {n.name: n for n in nodes_of(spec)}
    report = Executor(nodes, str(workdir / "ours.db"), run_checks).run(plan.phases())
    if not report.ok:
        raise RuntimeError(report.error)
    phases = {}
    for r in report.results:
        phases[r.phase] = max(phases.get(r.phase, 0.0), r.seconds)
    (workdir / "ours.db").unlink()
    return {
        "seconds": round(time.monotonic() - t0, 2),
        "fetch_verify_s": round(fetched - t0, 2),
        "slowest_node_per_phase_s": phases,
        "keys": next(iter(report.checks["data"].values()))["keys"],
    }


def runbook_way(spec: ClusterSpec, storage: LocalStorage, workdir: Path, run_id: str, tool: str) -> dict:
    """Fetch once, then per node in turn: stop, set aside, copy the snapshot, snapshot restore; start all."""
    t0 = time.monotonic()
    chosen = source.choose_backup(catalog.list_backups(storage, CLUSTER_ID), CLUSTER_ID)
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


def run(size_mb: int, value_kb: int, version: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="restore-bench-") as tmp:
        workdir = Path(tmp)
        fleet = Fleet(workdir / "fleet", make_pki(workdir / "pki", fleet_net()), 3, version)
        try:
            fleet.start()
            with fleet.client(timeout=60) as client:
                fill(client, size_mb * (1 << 20) // (value_kb * 1024), value_kb * 1024)
            spec = spec_of(fleet)
            storage = LocalStorage(workdir / "backups")
            record = pipeline.backup(access_of(spec), storage, cluster_id=CLUSTER_ID)
            fleet.lose_quorum("fail")
            a = ours(spec, storage, workdir, "bench-a")
            b = runbook_way(spec, storage, workdir, "bench-b", "etcdutl" if version >= "3.5" else "etcdctl")
        finally:
            fleet.stop()
    return {
        "size_mb": size_mb,
        "etcd": version,
        "raw_bytes": record.raw_size,
        "stored_bytes": record.size,
        "keys": record.key_count,
        "a_ours_s": a["seconds"],
        "a_fetch_verify_s": a["fetch_verify_s"],
        "a_phases_s": a["slowest_node_per_phase_s"],
        "b_runbook_sequential_s": b["seconds"],
        "a_over_b": round(a["seconds"] / b["seconds"], 2),
        "keys_after": [a["keys"], b["keys"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, nargs="+", default=[512], help="database size(s) to build")
    parser.add_argument("--value-kb", type=int, default=8, help="size of each Kubernetes-like value")
    parser.add_argument("--version", default="3.5.1", choices=["3.5.1", "3.4.23"], help="etcd version of the fleet")
    args = parser.parse_args()
    for size in args.size_mb:
        print(json.dumps(run(size, args.value_kb, args.version)), flush=True)


if __name__ == "__main__":
    main()
