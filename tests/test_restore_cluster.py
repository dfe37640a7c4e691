"""Whole-cluster restore (quorum lost) on the test fleet, through a real Prefect API, for etcd 3.5.1 and 3.4.23.

Fault injection used here: a node's restore tool (etcdutl on 3.5, etcdctl on 3.4) is
replaced in place by a script that runs the real binary (kept in the node's /root) for
everything but `snapshot restore`, which fails at once (or, on the other nodes, first
sleeps). The facts and plan see a working tool, so the failure happens midway, after
every node has been stopped and set aside and while the other nodes still restore: the
rollback must put every node back. An SSH connection is cut by a TCP relay in front of
one node's sshd; the Prefect API is taken away by stopping the server the run reports to.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.flow_runs import resume_flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings
from pyrage import x25519

from blocks import AgeIdentity, EtcdCluster, LocalStorage
from deployments.local_server import LocalPrefectServer
from etcd_backup import pipeline
from etcd_backup.catalog import manifest_key
from etcd_backup.etcd import EtcdAccess
from etcd_backup.storage.local import LocalStorage as LocalStore
from flows.restore_cluster import restore_cluster
from tests.fleet.data import fill
from tests.prefect_fixtures import register_secret
from tests.restore_helpers import (
    artifacts,
    assert_control_plane,
    fleet_state,
    in_thread,
    journal_showing,
    paused_run,
    planned_steps,
    save_cluster_block,
    task_runs,
)
from tests.servers.tcp_proxy import TCPProxy

pytestmark = [pytest.mark.restore, pytest.mark.fleet, pytest.mark.root, pytest.mark.slow]
CLUSTER_ID = "uk8s-restoretest"


class Setup:
    """A filled fleet, its backup in a local storage block, and its EtcdCluster block.

    kind: "zstd" (this tool's default), "age" (zstd + age, decrypted with an AgeIdentity block) or
    "legacy" (the old plugin's *.db.tar.gz without a manifest).
    """

    def __init__(self, fleet, tmp_path, kind: str = "zstd", keys: int = 400, value_size: int = 700):
        self.fleet = fleet
        with fleet.client() as client:
            fill(client, keys, value_size)
            client.put("/registry/secrets/kube-system/raw", b"\x00\xff binary \x01")
            self.data = {m.key: v for v, m in client.get_all()}
        self.dir = tmp_path / "backups"
        pki = fleet.pki
        access = EtcdAccess(
            tuple(fleet.endpoints), ca=pki.ca.read_text(), cert=pki.cert.read_text(), key=pki.key.read_text()
        )
        self.identity = None
        recipients = []
        if kind == "age":
            key = x25519.Identity.generate()
            recipients = [str(key.to_public())]
            self.identity = f"age-{secrets.token_hex(4)}"
            AgeIdentity(identity=str(key)).save(self.identity)
            register_secret("an age identity", str(key))
        store = LocalStore(self.dir)
        self.record = pipeline.backup(
            access,
            store,
            cluster_id=CLUSTER_ID,
            recipients=recipients,
            compression="tar.gz" if kind == "legacy" else "zstd",
        )
        if kind == "legacy":
            store.delete([manifest_key(self.record.key)])
        self.storage_name = f"restore-{secrets.token_hex(4)}"
        LocalStorage(directory=str(self.dir)).save(self.storage_name)
        self.storage = f"local-directory-storage/{self.storage_name}"
        self.cluster = f"cluster-{secrets.token_hex(4)}"
        self.save_block()

    def save_block(self) -> None:
        """(Re)save the cluster block with the fleet's current host keys, as an operator would after a rebuild."""
        save_cluster_block(self.fleet, CLUSTER_ID, self.cluster)

    def run(self, **params):
        """Run the flow and return its final state (never raises)."""
        return restore_cluster(
            cluster=self.cluster, storage=self.storage, identity=self.identity, return_state=True, **params
        )


@pytest.fixture
def setup(request, prefect_api, fleet, tmp_path):
    return Setup(fleet, tmp_path, getattr(request, "param", "zstd"))


def assert_restored(setup: Setup, result: dict) -> None:
    fleet = setup.fleet
    fleet.wait_healthy(60)
    members = json.loads(fleet.etcdctl("member", "list", "-w", "json").stdout)["members"]
    assert sorted((m["name"], m["peerURLs"]) for m in members) == [(n.name, [n.peer_url]) for n in fleet.nodes]
    with fleet.client() as client:
        assert {m.key: v for v, m in client.get_all()} == setup.data
    initial = ",".join(f"{n.name}=https://{n.ip}:2380" for n in fleet.nodes)
    for node in fleet.nodes:
        conf = node.path("/etc/etcd/etcd.conf").read_text()
        assert f'ETCD_INITIAL_CLUSTER_TOKEN="{result["token"]}"' in conf
        assert f'ETCD_INITIAL_CLUSTER="{initial}"' in conf and f"ETCD_NAME={node.name}\n" in conf
        assert f'ETCD_LISTEN_PEER_URLS="https://{node.ip}:2380"' in conf


# --- end to end --------------------------------------------------------------------


@pytest.mark.parametrize("etcd_version,setup", [("3.5.1", "zstd"), ("3.4.23", "age")], indirect=True)
def test_restore_after_two_members_failed(setup, etcd_version):
    fleet = setup.fleet
    fleet.node("etcd1").ssh("systemctl start kube-apiserver kube-scheduler")
    fleet.lose_quorum("fail")
    state = setup.run(confirm=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["retained"] == "etcd1" and result["backup"] == setup.record.key
    assert_restored(setup, result)
    log = fleet.node("etcd1").systemctl_log()  # the apiserver was stopped for the restore, then started again
    assert any(line.endswith(" stop kube-apiserver") for line in log)
    assert log[-2].endswith(" start kube-apiserver") and log[-1].endswith(" restart kube-scheduler")
    for node in fleet.nodes:  # old data kept aside, never deleted
        assert list(node.path("/var/lib").glob("etcd.bak-*/default.etcd/member/snap/db"))
    fleet.node("etcd2").ssh("systemctl restart etcd")  # the rewritten etcd.conf works for a later restart
    fleet.wait_healthy(60)
    counts = result["data"]
    assert len(counts) == 3 and {v["keys"] for v in counts.values()} == {len(setup.data)}
    published = artifacts(state)
    report = published[result["report"]]
    assert "succeeded" in report
    for node in fleet.nodes:
        assert f"| snapshot restore @ {node.name} | {node.name} | restore | done | 1 |" in report
        assert re.search(rf"\| {node.ip}:2379 \| \d+ \| {len(setup.data)} \|", report)
    plan = planned_steps(published[f"restore-plan-{CLUSTER_ID}"])
    runs = task_runs(state)  # one task run per planned step, named like the runbook, each completed
    assert {name: runs[name].state_type.value for name in plan} == dict.fromkeys(plan, "COMPLETED")
    assert {"stop kube-apiserver @ etcd1", "set aside /var/lib/etcd @ etcd2", "wait healthy"} <= set(plan)
    assert not [name for name in runs if name.startswith("undo:")]


@pytest.mark.parametrize("etcd_version,setup", [("3.5.1", "legacy"), ("3.4.23", "zstd")], indirect=True)
def test_restore_after_two_nodes_were_deleted_with_control_plane(setup, etcd_version):
    fleet = setup.fleet
    lost = fleet.lose_quorum("delete")
    setup.save_block()
    state = setup.run(confirm=True, restore_control_plane=True)
    assert state.is_completed(), state.message
    assert state.result()["backup"] == setup.record.key
    assert_restored(setup, state.result())
    for node in lost:
        assert_control_plane(node)
        assert node.path("/usr/lib/systemd/system/etcd.service").stat().st_size > 0
    assert not [line for line in fleet.node("etcd1").systemctl_log() if "enable --now kube" in line]


# --- safety --------------------------------------------------------------------------


def test_dry_run_changes_nothing_and_publishes_the_plan(setup):
    fleet = setup.fleet
    healthy = setup.run(dry_run=True)
    assert healthy.is_failed() and "etcd-restore-member" in healthy.message  # quorum holds: not this flow
    fleet.lose_quorum("delete")
    stale = setup.run(dry_run=True)  # the block still has the deleted machines' host keys
    assert stale.is_failed() and "host key" in stale.message and "etcd2" in stale.message
    setup.save_block()
    unfinished = f"{CLUSTER_ID}-backup-etcd-3.5.1-2099-01-01T00-00-00.db.zst"
    (setup.dir / unfinished).write_bytes(b"an upload still running")  # newer, no manifest: skipped and named
    before = fleet_state(fleet)
    state = setup.run(dry_run=True, restore_control_plane=True)
    assert state.is_completed(), state.message
    assert fleet_state(fleet) == before
    assert state.result()["backup"] == setup.record.key
    plan = artifacts(state)[state.result()["plan"]]
    assert "Dry run" in plan and "nothing was changed" in plan
    assert f"## Newer objects not restored\n\n- `{unfinished}`: no manifest: an upload still running" in plan
    for node in fleet.nodes:
        assert f"--name={node.name}" in plan and f"--initial-advertise-peer-urls=https://{node.ip}:2380" in plan
    assert "copy file etcd1:/usr/bin/etcd -> /usr/bin/etcd" in plan and "systemctl restart network" in plan


def test_a_healthy_cluster_is_refused_after_the_upload_and_nothing_is_left(setup):
    before = fleet_state(setup.fleet)  # quorum holds: the check, run beside the upload, refuses the restore
    state = setup.run(confirm=True)
    assert state.is_failed() and "quorum is healthy" in state.message and "etcd-restore-member" in state.message
    assert fleet_state(setup.fleet) == before
    runs = task_runs(state)
    assert {name for name in runs if name.startswith("undo: upload snapshot")} == {
        f"undo: upload snapshot @ {node.name}" for node in setup.fleet.nodes
    }
    assert not [name for name in runs if name.startswith("stop ")]


def test_corrupt_backup_is_refused_before_any_node_changes(setup):
    fleet = setup.fleet
    fleet.lose_quorum("fail")
    stored = setup.dir / setup.record.key
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    before = fleet_state(fleet)
    state = setup.run(confirm=True)
    assert state.is_failed() and f"[verify on {setup.record.key}]" in state.message, state.message
    assert fleet_state(fleet) == before


def test_confirmation_gate_refuses_a_wrong_name_then_accepts_the_right_one(setup):
    fleet = setup.fleet
    fleet.lose_quorum("fail")
    before = fleet_state(fleet)
    thread, box = in_thread(lambda: setup.run())
    resume_flow_run(paused_run(setup.cluster).id, run_input={"cluster_name": "uk8s-someother"})
    thread.join(300)
    assert box["state"].is_failed() and "is not the cluster's name" in box["state"].message
    assert fleet_state(fleet) == before

    thread, box = in_thread(lambda: setup.run())
    resume_flow_run(paused_run(setup.cluster).id, run_input={"cluster_name": CLUSTER_ID})
    thread.join(600)
    assert box["state"].is_completed(), box["state"].message
    assert_restored(setup, box["state"].result())


def _wrap_restore_tool(node, etcd_version: str, on_restore: str) -> None:
    """Replace the node's restore tool in place: `snapshot restore` first runs on_restore, the rest the real tool."""
    tool = "etcdutl" if etcd_version.startswith("3.5") else "etcdctl"
    real = node.path(f"/root/{tool}.real")
    shutil.copyfile(node.path(f"/usr/bin/{tool}"), real)
    real.chmod(0o755)
    script = (
        f'#!/bin/sh\nif [ "$1" = snapshot ] && [ "$2" = restore ]; then\n  {on_restore}\nfi\n'
        f'exec /root/{tool}.real "$@"\n'
    )
    with open(node.path(f"/usr/bin/{tool}"), "r+b") as f:  # in place: the path is a bind mount
        f.truncate(0)
        f.write(script.encode())


def _rows(report: str) -> dict[str, dict]:
    """The report's step table: step name -> status, start and duration (seconds)."""
    rows = {}
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 9 and cells[4].isdigit():
            rows[cells[0]] = {"status": cells[3], "started": float(cells[5]), "seconds": float(cells[6])}
    return rows


def _undoable(plan_text: str) -> list[str]:
    """The planned steps that have an undo (a `- undo:` line under their heading)."""
    found, current = [], None
    for line in plan_text.splitlines():
        if line.startswith("### "):
            current = line[4:].split(" *(")[0]
        elif line.startswith("   - undo:") and current and current not in found:
            found.append(current)
    return found


def assert_as_before(before: dict, after: dict) -> None:
    """Every node exactly as before the run: files byte for byte, running state; only the run dir is new."""
    for name in before:
        assert after[name]["running"] == before[name]["running"], name
        changed = {
            k for k in before[name] if k not in ("systemctl", "var/lib") and before[name][k] != after[name].get(k)
        }
        assert not changed, f"{name}: {sorted(changed)[:5]}"
        added = [k for k in after[name] if k not in before[name] and not k.startswith("var/lib/etcd-restore-")]
        assert not added, f"{name}: {added[:5]}"
        assert [d for d in after[name]["var/lib"] if d not in before[name]["var/lib"]] == [
            d for d in after[name]["var/lib"] if d.startswith("etcd-restore-")
        ]


@pytest.mark.faults
@pytest.mark.parametrize("etcd_version", ["3.5.1", "3.4.23"], indirect=True)
def test_failure_midway_rolls_every_node_back(setup, etcd_version):
    fleet = setup.fleet
    fleet.lose_quorum("fail")
    _wrap_restore_tool(fleet.node("etcd3"), etcd_version, 'echo "injected failure of snapshot restore" >&2; exit 1')
    for name in ("etcd1", "etcd2"):  # still restoring when etcd3 fails; they finish after the failure
        _wrap_restore_tool(fleet.node(name), etcd_version, "sleep 3")
    before = fleet_state(fleet)
    state = setup.run(confirm=True)
    assert state.is_failed() and "rolled back" in state.message and "injected failure" in state.message
    assert_as_before(before, fleet_state(fleet))
    assert fleet_state(fleet)["etcd1"]["running"]
    published = artifacts(state)
    report = published[f"restore-report-{CLUSTER_ID}"]
    assert "FAILED and was rolled back" in report
    rows = _rows(report)
    failed = rows["snapshot restore @ etcd3"]
    assert failed["status"] == "failed"
    for name in ("etcd1", "etcd2"):
        done = rows[f"snapshot restore @ {name}"]
        assert done["status"] == "done" and done["started"] + done["seconds"] > failed["started"] + failed["seconds"]
        assert rows[f"set aside /var/lib/etcd @ {name}"]["status"] == "undone"
    runs = task_runs(state)
    assert runs["snapshot restore @ etcd3"].state_type.value == "FAILED"
    assert runs["snapshot restore @ etcd1"].state_type.value == "COMPLETED"
    undone = [name for name in _undoable(published[f"restore-plan-{CLUSTER_ID}"]) if name in rows]
    assert "undo: set aside /var/lib/etcd @ etcd1" in {f"undo: {n}" for n in undone}
    assert {f"undo: {n}": "COMPLETED" for n in undone} == {
        name: r.state_type.value for name, r in runs.items() if name.startswith("undo:")
    }
    assert not [name for name in runs if name.startswith("start etcd")]  # nothing after the failed phase ran


# --- faults of the machinery: an SSH connection cut mid-step, the Prefect API gone mid-restore ------------------


@pytest.mark.faults
def test_a_cut_ssh_connection_in_a_repeatable_step_is_retried(prefect_api, fleet, tmp_path):
    setup = Setup(fleet, tmp_path, keys=600, value_size=6000)  # 3.6 MB, 2 MB zstd: the cut falls in the upload
    etcd2 = fleet.node("etcd2")
    with TCPProxy(etcd2.ip, 22, listen_host=etcd2.ip) as relay:
        spec = fleet.spec(CLUSTER_ID)
        spec.nodes[1].ssh_port = relay.port
        spec.ssh.known_hosts += f"[{etcd2.ip}]:{relay.port} {etcd2.host_key}\n"
        EtcdCluster.from_spec(spec).save(setup.cluster, overwrite=True)
        fleet.lose_quorum("fail")
        relay.cut_after(
            1 << 20, stay_gone=False
        )  # facts, stop, etcd.conf and set-aside use a few KB: the cut falls in the upload
        state = setup.run(confirm=True)
        assert state.is_completed(), state.message
        assert relay.cuts == 1
    assert_restored(setup, state.result())
    rows = _rows(artifacts(state)[state.result()["report"]])
    assert rows["upload snapshot @ etcd2"]["status"] == "done"
    run = task_runs(state)["upload snapshot @ etcd2"]
    assert run.state_type.value == "COMPLETED" and run.run_count == 2  # failed on the cut, then retried


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.faults
@pytest.mark.parametrize("outcome", ["finishes", "rolls back"])
def test_a_restore_finishes_or_rolls_back_when_the_prefect_api_goes_away(fleet, tmp_path, outcome):
    server = LocalPrefectServer(tmp_path / "prefect", port=_free_port()).start()
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            setup = Setup(fleet, tmp_path)
        fleet.lose_quorum("fail")
        for name in ("etcd1", "etcd2"):  # the restore phase outlasts the server's shutdown
            _wrap_restore_tool(fleet.node(name), "3.5.1", "sleep 5")
        if outcome == "rolls back":
            _wrap_restore_tool(
                fleet.node("etcd3"), "3.5.1", 'sleep 2; echo "injected failure of snapshot restore" >&2; exit 1'
            )
        before = fleet_state(fleet)
        reports = tmp_path / "reports"
        env = {**server.env(), "ETCD_BACKUP_REPORT_DIR": str(reports), "ETCD_BACKUP_RETRY_DELAY": "0.2"}
        call = f"restore_cluster(cluster={setup.cluster!r}, storage={setup.storage!r}, confirm=True, return_state=True)"
        script = f"from flows.restore_cluster import restore_cluster\ns = {call}\nprint('FINAL', s.type.value)\n"
        log = open(tmp_path / "flow.log", "w")
        flow = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=log, stderr=subprocess.STDOUT)
        journal = journal_showing(reports, '"name": "upload snapshot @')
        server.stop()  # the API goes away while the nodes are half way
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{server.api_url}/health", timeout=2)
        later = '"name": "start etcd @' if outcome == "finishes" else '"event": "undo"'
        assert later not in journal.read_text()  # those steps run with the API away
        report = journal.with_suffix(".md")
        deadline = time.monotonic() + 300
        while not report.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        text = report.read_text()  # written before the artifact, which waits for the API
        if outcome == "finishes":
            assert "succeeded" in text
            fleet.wait_healthy(60)
            with fleet.client() as client:
                assert {m.key: v for v, m in client.get_all()} == setup.data
        else:
            assert "FAILED and was rolled back" in text and "injected failure" in text
            assert_as_before(before, fleet_state(fleet))
        server.start()  # the API comes back: the run reports its end and the buffered task runs
        assert flow.wait(300) == 0
        final = "COMPLETED" if outcome == "finishes" else "FAILED"
        assert f"FINAL {final}" in (tmp_path / "flow.log").read_text()
        with temporary_settings({PREFECT_API_URL: server.api_url}), get_client(sync_client=True) as client:
            [run] = client.read_flow_runs()
            assert run.state_type.value == final
    finally:
        server.stop()
