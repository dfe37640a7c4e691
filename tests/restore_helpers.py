"""Helpers shared by the restore end-to-end tests: node snapshots, artifacts, the paused run, control-plane checks."""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType

from blocks import EtcdCluster

KUBE = "kube-apiserver kube-controller-manager kube-scheduler"


def assert_control_plane(node) -> None:
    log = "\n".join(node.systemctl_log())
    assert all(f"enable --now {u}" in log for u in KUBE.split()) and "restart network" in log
    assert f"--advertise-address={node.ip} \\" in node.path("/etc/kubernetes/apiserver").read_text()
    for name in ("ifcfg-lo:internal", "ifcfg-lo:external"):
        assert node.path(f"/etc/sysconfig/network-scripts/{name}").stat().st_size > 0
    assert os.access(node.path("/usr/local/bin/hyperkube"), os.X_OK)
    assert node.path("/root/.kube/config").stat().st_size > 0


def snapshot_of(node) -> dict:
    """Everything a restore could change on a node: file contents (inodes for a running member's db/WAL)."""
    running = node.ssh("systemctl is-active etcd", check=False).stdout.strip() == "active"
    state = {
        "running": running,
        "systemctl": node.systemctl_log(),
        "var/lib": sorted(os.listdir(node.path("/var/lib"))),
    }
    for path in sorted(p for p in node.root.rglob("*") if p.is_file() and ".state" not in p.parts):
        rel = str(path.relative_to(node.root))
        live = running and re.search(r"default\.etcd/member/(wal|snap)/", rel)
        if live and rel.endswith(".tmp"):
            continue  # a running etcd re-creates its preallocated next WAL file when it starts
        state[rel] = path.stat().st_ino if live else hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def artifacts(state) -> dict[str, str]:
    """The markdown artifacts of the flow run, by key."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    return {a.key: a.data for a in found}


def task_runs(state, wait: float = 30.0) -> dict[str, object]:
    """The flow run's task runs by name, as the UI lists them (read once their state events stop changing)."""
    flow_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    seen, deadline = None, time.monotonic() + wait
    with get_client(sync_client=True) as client:
        while True:
            found = {r.name: r for r in client.read_task_runs(flow_run_filter=flow_run, limit=200)}
            shape = sorted((name, r.state_type, r.run_count) for name, r in found.items())
            if shape == seen or time.monotonic() > deadline:
                return found
            seen = shape
            time.sleep(2)


def planned_steps(plan_text: str) -> list[str]:
    """The step names of a published plan (its `### <step>` headings)."""
    return [line[4:].split(" *(")[0] for line in plan_text.splitlines() if line.startswith("### ")]


def fleet_state(fleet) -> dict:
    return {n.name: snapshot_of(n) for n in fleet.nodes}


def paused_run(cluster: str):
    with get_client(sync_client=True) as client:
        for _ in range(600):
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
                )
            )
            found = [r for r in runs if r.parameters.get("cluster") == cluster]
            if found:
                return found[0]
            time.sleep(0.5)
    raise AssertionError("the restore never paused for confirmation")


def in_thread(fn):
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(state=fn()), daemon=True)
    thread.start()
    return thread, box


def save_cluster_block(fleet, cluster_id: str, name: str) -> None:
    """Save an EtcdCluster block for the fleet with its current host keys, as an operator would."""
    EtcdCluster.from_spec(fleet.spec(cluster_id)).save(name, overwrite=True)


def journal_showing(directory: Path, text: str, timeout: float = 300) -> Path:
    """The restore journal in directory once it holds text (a step begun, done or undone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in directory.glob("restore-*.jsonl"):
            if text in path.read_text():
                return path
        time.sleep(0.05)
    raise AssertionError(f"no restore journal in {directory} ever showed {text!r}")
