"""Member replacement (quorum kept; runbook 3.1.1 and 3.2.1) on the test fleet, through a real Prefect API.

Both etcd versions: a failed member whose node was repaired (its etcd killed, db and WAL
damaged), and a node deleted and recreated bare at the same IP (new host key: the block
is updated as an operator would). Keys are written before the failure, while the member
is down and after it is back; every one must be served by every member.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest
from prefect.flow_runs import resume_flow_run

from blocks import EtcdCluster
from flows.restore_member import restore_member
from tests.fleet import fleet_net
from tests.fleet.inject import fail_subcommand, put_back
from tests.fleet.pki import host_domain
from tests.restore_helpers import (
    artifacts,
    assert_control_plane,
    fleet_state,
    in_thread,
    paused_run,
    save_cluster_block,
)

pytestmark = [pytest.mark.restore, pytest.mark.fleet, pytest.mark.root, pytest.mark.slow]
CLUSTER_ID = "uk8s-membertest"


class Setup:
    """A fleet with some keys, its EtcdCluster block, and the keys written so far."""

    def __init__(self, fleet):
        self.fleet = fleet
        self.cluster = f"cluster-{secrets.token_hex(4)}"
        self.data: dict[bytes, bytes] = {}
        self.put("before", 50)
        self.save_block()

    def put(self, tag: str, count: int) -> None:
        """Write count keys (through any member that answers) and remember them."""
        with self.fleet.client() as client:
            for i in range(count):
                key, value = f"/registry/configmaps/{tag}/{i}".encode(), os.urandom(200)
                client.put(key, value)
                self.data[key] = value

    def put_when_healthy(self, tag: str, count: int, down) -> None:
        """Write keys once the other members are healthy again (a new leader elected if the lost one led)."""
        self.fleet.wait_healthy(60, nodes=[n for n in self.fleet.nodes if n is not down])
        self.put(tag, count)

    def save_block(self) -> None:
        """(Re)save the cluster block with the fleet's current host keys, as an operator would after a rebuild."""
        save_cluster_block(self.fleet, CLUSTER_ID, self.cluster)

    def run(self, **params):
        """Run the flow and return its final state (never raises)."""
        return restore_member(cluster=self.cluster, return_state=True, **params)


@pytest.fixture
def setup(prefect_api, fleet):
    return Setup(fleet)


def assert_replaced(setup: Setup, name: str) -> None:
    """Three started members with the right names and peer URLs; every key served by every member, the new one too."""
    fleet = setup.fleet
    fleet.wait_healthy(60)
    members = json.loads(fleet.etcdctl("member", "list", "-w", "json").stdout)["members"]
    assert sorted((m["name"], m["peerURLs"]) for m in members) == [(n.name, [n.peer_url]) for n in fleet.nodes]
    setup.put("after", 20)
    for node in fleet.nodes:
        out = fleet.etcdctl(
            f"--endpoints={node.client_url}", "get", "/registry/", "--prefix", "--keys-only", "--consistency=s"
        ).stdout
        assert {k.encode() for k in out.split()} == set(setup.data), node.name
    with fleet.client() as client:
        assert {m.key: v for v, m in client.get_all()} == setup.data
    conf = fleet.node(name).path("/etc/etcd/etcd.conf").read_text()
    initial = ",".join(f"{n.name}=https://{n.ip}:2380" for n in fleet.nodes)
    assert f"ETCD_NAME={name}\n" in conf and 'ETCD_INITIAL_CLUSTER_STATE="existing"' in conf
    assert f'ETCD_INITIAL_CLUSTER="{initial}"' in conf
    assert f'ETCD_LISTEN_PEER_URLS="https://{fleet.node(name).ip}:2380"' in conf
    fleet.node(name).ssh("systemctl restart etcd")  # the rewritten etcd.conf works for a later restart
    fleet.wait_healthy(60)


# --- end to end ------------------------------------------------------------------------


@pytest.mark.parametrize("etcd_version", ["3.5.1", "3.4.23"], indirect=True)
def test_replace_a_failed_member_of_a_repaired_node(setup, etcd_version):
    fleet = setup.fleet
    failed = fleet.node("etcd2")
    fleet.fail_member(failed)
    setup.put_when_healthy("while-down", 30, failed)
    state = setup.run(failed_node="etcd2", confirm=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["failed"] == "etcd2" and result["removed"]
    assert_replaced(setup, "etcd2")
    assert list(failed.path("/var/lib").glob("etcd.bak-*/default.etcd/member/snap/db"))  # old data kept aside
    apiserver = failed.path("/etc/kubernetes/apiserver").read_text()
    assert f"--advertise-address={failed.ip} \\" in apiserver  # the copied config keeps this node's IP
    report = artifacts(state)[result["report"]]
    assert (
        "succeeded" in report
        and f"| member remove {result['removed']} (etcd2) @ etcd1 | etcd1 | remove | done" in report
    )
    assert "| start etcd @ etcd2 | etcd2 | start | done |" in report and f"`etcd2=https://{failed.ip}:2380`" in report


@pytest.mark.parametrize("etcd_version", ["3.5.1", "3.4.23"], indirect=True)
def test_replace_the_member_of_a_deleted_and_recreated_node_with_control_plane(setup, etcd_version):
    fleet = setup.fleet
    node = fleet.node("etcd3")
    fleet.delete_node(node)
    setup.put_when_healthy("while-deleted", 30, node)
    fleet.recreate_node(node)
    stale = setup.run(failed_node="etcd3", confirm=True)  # the block still has the deleted machine's host key
    assert stale.is_failed() and "host key" in stale.message and "etcd3" in stale.message
    setup.save_block()
    state = setup.run(failed_node="etcd3", healthy_node="etcd1", confirm=True, restore_control_plane=True)
    assert state.is_completed(), state.message
    assert state.result()["healthy"] == "etcd1"
    assert_replaced(setup, "etcd3")
    assert_control_plane(node)
    assert os.access(node.path("/usr/bin/etcd"), os.X_OK) and os.access(node.path("/usr/bin/etcdctl"), os.X_OK)
    assert node.path("/usr/lib/systemd/system/etcd.service").stat().st_size > 0
    assert any(line.endswith("enable --now etcd") for line in node.systemctl_log())


@pytest.fixture
def host_names(fleet):
    """Names <node>.fleet<N>.test for the fleet's IPs in /etc/hosts (edited in place, put back afterwards)."""
    hosts = Path("/etc/hosts")
    original = hosts.read_text()
    names = {node.name: f"{node.name}.{host_domain(fleet_net())}" for node in fleet.nodes}
    lines = "".join(f"{node.ip} {names[node.name]}\n" for node in fleet.nodes)
    with open(hosts, "a") as f:
        f.write(lines)
    try:
        yield names
    finally:
        current = hosts.read_text().replace(lines, "")
        with open(hosts, "r+") as f:  # in place: /etc/hosts may be a mount point
            f.truncate(0)
            f.write(current if current.strip() else original)


def test_replace_a_member_when_the_block_names_its_endpoints_by_host_name(setup, host_names):
    fleet = setup.fleet
    spec = fleet.spec(CLUSTER_ID)
    spec.endpoints = [f"https://{host_names[n.name]}:2379" for n in fleet.nodes]
    EtcdCluster.from_spec(spec).save(setup.cluster, overwrite=True)
    failed = fleet.node("etcd2")
    fleet.fail_member(failed)
    setup.put_when_healthy("while-down", 10, failed)
    state = setup.run(failed_node="etcd2", confirm=True)
    assert state.is_completed(), state.message
    assert state.result()["removed"] and state.result()["healthy"] == "etcd1"
    assert_replaced(setup, "etcd2")
    report = artifacts(state)[state.result()["report"]]
    assert f"`etcd2=https://{failed.ip}:2380`" in report


# --- safety ----------------------------------------------------------------------------


def test_refuses_an_unknown_node_a_healthy_member_and_a_lost_quorum(setup):
    fleet = setup.fleet
    before = fleet_state(fleet)
    unknown = setup.run(failed_node="etcd9", confirm=True)
    assert unknown.is_failed() and "'etcd9' is not a node of cluster" in unknown.message
    healthy = setup.run(failed_node="etcd2", confirm=True)
    assert healthy.is_failed() and "etcd2 answers health checks" in healthy.message
    assert fleet_state(fleet) == before
    fleet.lose_quorum("fail")
    before = fleet_state(fleet)
    lost = setup.run(failed_node="etcd2", confirm=True)
    assert lost.is_failed() and "quorum is lost" in lost.message and "etcd-restore-cluster" in lost.message
    assert fleet_state(fleet) == before


def test_dry_run_changes_nothing_then_the_confirmation_gate_works(setup):
    fleet = setup.fleet
    failed = fleet.node("etcd2")
    fleet.fail_member(failed)
    before = fleet_state(fleet)
    dry = setup.run(failed_node="etcd2", dry_run=True, restore_control_plane=True)
    assert dry.is_completed(), dry.message
    assert fleet_state(fleet) == before
    plan = artifacts(dry)[dry.result()["plan"]]
    assert "Dry run" in plan and "nothing was changed" in plan
    assert f"member remove {dry.result()['remove_id']}" in plan
    assert f"member add etcd2 --peer-urls=https://{failed.ip}:2380" in plan
    assert "copy file etcd1:/usr/bin/etcd -> /usr/bin/etcd" in plan and "systemctl restart network" in plan

    thread, box = in_thread(lambda: setup.run(failed_node="etcd2"))
    resume_flow_run(paused_run(setup.cluster).id, run_input={"cluster_name": "uk8s-someother"})
    thread.join(300)
    assert box["state"].is_failed() and "is not the cluster's name" in box["state"].message
    assert fleet_state(fleet) == before

    thread, box = in_thread(lambda: setup.run(failed_node="etcd2"))
    resume_flow_run(paused_run(setup.cluster).id, run_input={"cluster_name": CLUSTER_ID})
    thread.join(300)
    assert box["state"].is_completed(), box["state"].message
    assert_replaced(setup, "etcd2")


def test_failure_after_member_remove_puts_the_node_back_and_a_rerun_only_adds(setup):
    fleet = setup.fleet
    failed, healthy = fleet.node("etcd2"), fleet.node("etcd1")
    fleet.fail_member(failed)
    fail_subcommand(healthy, "etcdctl", "member add", "injected failure of member add")
    before = fleet_state(fleet)["etcd2"]
    state = setup.run(failed_node="etcd2", healthy_node="etcd1", confirm=True)
    assert state.is_failed() and "injected failure of member add" in state.message
    assert "etcd2 was removed from the member list and is NOT a member now" in state.message
    assert "run etcd-restore-member again with failed_node=etcd2" in state.message
    after = fleet_state(fleet)["etcd2"]
    changed = [k for k in before if k not in ("systemctl", "var/lib") and before[k] != after.get(k)]
    assert not changed, changed[:5]
    assert [k for k in after if k not in before and not k.startswith("var/lib/etcd-restore-")] == []
    report = artifacts(state)["member-report-uk8s-membertest"]
    assert "etcd2 was removed from the member list and is NOT a member now" in report
    members = json.loads(fleet.etcdctl("member", "list", "-w", "json").stdout)["members"]
    assert sorted(m["name"] for m in members) == ["etcd1", "etcd3"]

    put_back(healthy, "etcdctl")
    again = setup.run(failed_node="etcd2", confirm=True)
    assert again.is_completed(), again.message
    assert again.result()["removed"] is None
    assert_replaced(setup, "etcd2")
