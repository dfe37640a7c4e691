"""diagnose(): the runbook case for every outage (pure), and the etcd-diagnose flow against the real fleet."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from blocks import EtcdCluster, LocalStorage
from etcd_backup import pipeline
from etcd_backup.cluster import ClusterSpec, MasterNode, SSHAccess
from etcd_backup.diagnose import (
    HEALTHY,
    MANUAL,
    MEMBER_FAILED,
    NODE_DELETED,
    QUORUM_LOST_DELETED,
    QUORUM_LOST_FAILED,
    diagnose,
)
from etcd_backup.etcd import EtcdAccess, MemberInfo
from etcd_backup.facts import FILE_KEYS, NodeFacts
from etcd_backup.restore.facts import RestoreFacts
from etcd_backup.storage.local import LocalStorage as LocalStore
from flows.diagnose import diagnose_cluster, run_command
from flows.restore_cluster import restore_cluster
from flows.restore_member import restore_member

NAMES = ("etcd1", "etcd2", "etcd3", "etcd4", "etcd5")


def spec_of(size: int = 3) -> ClusterSpec:
    return ClusterSpec(
        cluster_id="uk8s-test",
        ca_pem="ca",
        cert_pem="cert",
        key_pem="key",
        nodes=[MasterNode(name=NAMES[i], ip=f"10.0.0.{i + 1}") for i in range(size)],
        ssh=SSHAccess(private_key="k"),
    )


def ip(name: str) -> str:
    return f"10.0.0.{NAMES.index(name) + 1}"


def restore_facts(base: NodeFacts) -> RestoreFacts:
    """What the restore flows see of a node: its base facts and, when the file is there, a readable etcd.conf."""
    return RestoreFacts(node=base, conf_text="ETCD_NAME=x\n" if base.files.get("etcd_conf") else None)


def healthy(name: str, **kw) -> RestoreFacts:
    kw = {"etcd_active": True, **kw}
    return restore_facts(
        NodeFacts(
            name=name,
            ip=ip(name),
            reachable=True,
            files=dict.fromkeys(FILE_KEYS, True),
            etcd_version="3.5.1",
            data_dir_present=True,
            free_bytes=10 << 30,
            **kw,
        )
    )


def failed(name: str) -> RestoreFacts:
    """etcd crashed and its data is damaged; the files are still there."""
    return healthy(name, etcd_active=False)


def bare(name: str) -> RestoreFacts:
    """A recreated machine with the same IP and nothing on it."""
    files = dict.fromkeys(FILE_KEYS, False)
    return restore_facts(NodeFacts(name=name, ip=ip(name), reachable=True, files=files, free_bytes=10 << 30))


def unreachable(name: str, error: str = "cannot reach root@x:22: NoValidConnectionsError") -> RestoreFacts:
    return restore_facts(NodeFacts(name=name, ip=ip(name), reachable=False, error=error))


def health(*ok: str, size: int = 3) -> dict[str, str]:
    return {f"https://{ip(n)}:2379": "ok" if n in ok else "UNAVAILABLE: connection refused" for n in NAMES[:size]}


def members(*names: str) -> list[MemberInfo]:
    return [
        MemberInfo(
            id=0x1000 + i,
            name=n,
            peer_urls=(f"https://{ip(n)}:2380",),
            client_urls=(f"https://{ip(n)}:2379",),
            is_learner=False,
        )
        for i, n in enumerate(names)
    ]


ALL = ("etcd1", "etcd2", "etcd3")


def test_healthy_cluster_needs_nothing():
    d = diagnose(spec_of(), [healthy(n) for n in ALL], health(*ALL), members(*ALL))
    assert d.case == HEALTHY and d.quorum and d.actions == () and d.flow is None
    assert [n.state for n in d.nodes] == ["healthy"] * 3 and d.findings == ()
    assert d.summary.startswith("healthy")


def test_3_1_1_one_failed_member_keeps_quorum():
    d = diagnose(
        spec_of(), [healthy("etcd1"), failed("etcd2"), healthy("etcd3")], health("etcd1", "etcd3"), members(*ALL)
    )
    assert d.case == MEMBER_FAILED and d.quorum
    assert d.flow == "etcd-restore-member" and d.parameters == {"failed_node": "etcd2", "healthy_node": "etcd1"}
    assert d.actions[0].ready and [n.state for n in d.nodes] == ["healthy", "failed", "healthy"]
    assert "etcd-restore-member with failed_node=etcd2 healthy_node=etcd1" in d.summary


def test_3_2_1_deleted_node_recreated_bare():
    d = diagnose(
        spec_of(), [healthy("etcd1"), healthy("etcd2"), bare("etcd3")], health("etcd1", "etcd2"), members(*ALL)
    )
    assert d.case == NODE_DELETED and d.parameters == {"failed_node": "etcd3", "healthy_node": "etcd1"}
    assert d.nodes[2].state == "bare" and "missing: etcd_bin" in d.nodes[2].notes[0]


def test_3_2_1_deleted_node_not_yet_recreated_is_blocked():
    d = diagnose(
        spec_of(), [healthy("etcd1"), unreachable("etcd2"), healthy("etcd3")], health("etcd1", "etcd3"), members(*ALL)
    )
    assert d.case == NODE_DELETED and d.parameters["failed_node"] == "etcd2"
    assert not d.actions[0].ready and "recreate the machine with the same IP" in d.actions[0].note
    assert d.nodes[1].state == "unreachable" and "SSH failed" in d.nodes[1].notes[0]


def test_unknown_host_key_says_to_update_known_hosts():
    f = unreachable("etcd2", error="host key SHA256:abc of 10.0.0.2 is not in known_hosts; add it")
    d = diagnose(spec_of(), [healthy("etcd1"), f, healthy("etcd3")], health("etcd1", "etcd3"), members(*ALL))
    assert any("known_hosts" in note for note in d.nodes[1].notes)


def test_healthy_source_skips_nodes_without_ssh_or_files():
    d = diagnose(
        spec_of(), [unreachable("etcd1"), bare("etcd2"), healthy("etcd3")], health("etcd1", "etcd3"), members(*ALL)
    )
    assert d.case == NODE_DELETED and d.parameters == {"failed_node": "etcd2", "healthy_node": "etcd3"}


def test_3_1_2_quorum_lost_with_failed_members():
    d = diagnose(spec_of(), [healthy("etcd1"), failed("etcd2"), failed("etcd3")], health(), members(*ALL))
    assert d.case == QUORUM_LOST_FAILED and not d.quorum
    assert d.flow == "etcd-restore-cluster" and d.parameters == {"retained_node": "etcd1", "backup": "latest"}
    assert d.actions[0].ready


def test_3_1_2_retains_the_node_whose_etcd_still_runs():
    d = diagnose(spec_of(), [failed("etcd1"), failed("etcd2"), healthy("etcd3")], health(), None)
    assert d.case == QUORUM_LOST_FAILED and d.parameters["retained_node"] == "etcd3"
    assert "the member list could not be read" in d.findings and d.nodes[0].is_member is None


def test_3_2_2_quorum_lost_with_deleted_nodes():
    d = diagnose(spec_of(), [healthy("etcd1"), bare("etcd2"), bare("etcd3")], health(), members(*ALL))
    assert d.case == QUORUM_LOST_DELETED and d.parameters == {"retained_node": "etcd1", "backup": "latest"}
    assert d.actions[0].ready


def test_3_2_2_unreachable_nodes_block_the_restore_until_recreated():
    d = diagnose(spec_of(), [bare("etcd1"), unreachable("etcd2"), failed("etcd3")], health(), None)
    assert d.case == QUORUM_LOST_DELETED and d.parameters["retained_node"] == "etcd3"
    assert not d.actions[0].ready and "etcd2" in d.actions[0].note


def test_mixed_one_deleted_one_failed_without_quorum_restores_the_cluster():
    d = diagnose(spec_of(), [healthy("etcd1"), bare("etcd2"), failed("etcd3")], health(), members(*ALL))
    assert d.flow == "etcd-restore-cluster" and d.parameters["retained_node"] == "etcd1"
    assert d.case in (QUORUM_LOST_FAILED, QUORUM_LOST_DELETED)
    assert [n.state for n in d.nodes] == ["no quorum", "bare", "failed"]
    assert d.nodes[0].notes == ("etcd runs but does not answer health checks (no quorum)",)


def test_five_nodes_two_broken_keep_quorum_and_get_one_run_each():
    spec = spec_of(5)
    facts = [healthy("etcd1"), failed("etcd2"), healthy("etcd3"), bare("etcd4"), healthy("etcd5")]
    d = diagnose(spec, facts, health("etcd1", "etcd3", "etcd5", size=5), members(*NAMES))
    assert d.case == MEMBER_FAILED and [a.parameters["failed_node"] for a in d.actions] == ["etcd2", "etcd4"]
    assert {a.flow for a in d.actions} == {"etcd-restore-member"}


def test_five_nodes_three_deleted_lose_quorum():
    spec = spec_of(5)
    facts = [healthy("etcd1"), bare("etcd2"), failed("etcd3"), bare("etcd4"), bare("etcd5")]
    d = diagnose(spec, facts, health(size=5), None)
    assert d.case == QUORUM_LOST_DELETED and d.parameters["retained_node"] == "etcd1"


def test_no_reachable_node_with_files_cannot_be_recovered_automatically():
    d = diagnose(spec_of(), [unreachable("etcd1"), bare("etcd2"), unreachable("etcd3")], health(), None)
    assert d.case == MANUAL and d.actions == () and d.flow is None
    assert "cannot recover automatically" in d.summary


def test_quorum_kept_but_no_healthy_node_reachable_is_manual():
    d = diagnose(
        spec_of(),
        [unreachable("etcd1"), failed("etcd2"), unreachable("etcd3")],
        health("etcd1", "etcd3"),
        members(*ALL),
    )
    assert d.case == MANUAL and d.quorum


def test_members_and_spec_nodes_that_do_not_match_are_reported():
    extra = MemberInfo(id=0xABC, name="etcd9", peer_urls=("https://10.9.9.9:2380",), client_urls=(), is_learner=False)
    d = diagnose(spec_of(), [healthy(n) for n in ALL], health(*ALL), members("etcd1", "etcd2") + [extra])
    assert d.case == HEALTHY
    assert d.nodes[2].is_member is False and "not in the etcd member list" in d.nodes[2].notes
    assert d.findings == ("member etcd9 abc https://10.9.9.9:2380 is in the member list but not in the cluster block",)


def test_an_unstarted_member_is_matched_by_peer_url():
    unstarted = MemberInfo(id=0x77, name="", peer_urls=("https://10.0.0.3:2380",), client_urls=(), is_learner=False)
    d = diagnose(
        spec_of(),
        [healthy("etcd1"), healthy("etcd2"), bare("etcd3")],
        health("etcd1", "etcd2"),
        members("etcd1", "etcd2") + [unstarted],
    )
    assert d.nodes[2].is_member and d.findings == () and d.case == NODE_DELETED


def test_to_dict_is_plain_data():
    d = diagnose(
        spec_of(), [healthy("etcd1"), failed("etcd2"), healthy("etcd3")], health("etcd1", "etcd3"), members(*ALL)
    )
    data = d.to_dict()
    assert data["case"] == "3.1.1" and data["flow"] == "etcd-restore-member"
    assert data["nodes"][1]["state"] == "failed" and data["actions"][0]["parameters"]["failed_node"] == "etcd2"


def test_run_command_line():
    assert (
        run_command("etcd-restore-member", "prod", {"failed_node": "etcd2", "healthy_node": "etcd1"})
        == "prefect deployment run etcd-restore-member/prod -p failed_node=etcd2 -p healthy_node=etcd1"
    )


# -- the flow against the real fleet ---------------------------------------------------------------------------------


def on_fleet(test):
    """Mark a test that runs the flow against the real fleet."""
    for mark in (pytest.mark.fleet, pytest.mark.root, pytest.mark.slow, pytest.mark.restore):
        test = mark(test)
    return test


def why(result: dict) -> tuple:
    """What a failed assertion shows: the summary and the per-node findings."""
    return result["summary"], result["nodes"]


@pytest.fixture
def cluster_block(prefect_api, fleet):
    """Save an EtcdCluster block for the fleet; returns a function that (re)saves it as an operator would."""
    name = f"diag-{secrets.token_hex(4)}"

    def save() -> str:
        EtcdCluster(
            cluster_id="uk8s-diag",
            endpoints=fleet.endpoints,
            ca_pem=fleet.pki.ca.read_text(),
            cert_pem=fleet.pki.cert.read_text(),
            key_pem=fleet.pki.key.read_text(),
            nodes=[MasterNode(name=n.name, ip=n.ip) for n in fleet.nodes],
            ssh_user="root",
            ssh_private_key=fleet.ssh_private_key,
            known_hosts=fleet.known_hosts,
        ).save(name, overwrite=True)
        return name

    save()
    return save


def artifact_text(cluster_id: str) -> str:
    """The newest diagnosis artifact of the cluster, as the UI shows it."""

    async def latest() -> str:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"diagnosis-{cluster_id}"]))
            )
            return sorted(found, key=lambda a: a.created)[-1].data

    return asyncio.run(latest())


VERSIONS = pytest.mark.parametrize("etcd_version", ["3.5.1", "3.4.23"], indirect=True)


@VERSIONS
@on_fleet
def test_flow_on_a_healthy_fleet(fleet, cluster_block, etcd_version):
    result = diagnose_cluster(cluster_block())
    assert result["case"] == "healthy" and result["quorum"], why(result)
    assert result["commands"] == [] and result["flow"] is None
    assert [f["etcd_version"] for f in result["facts"]] == [etcd_version] * 3
    text = artifact_text("uk8s-diag")
    assert "healthy" in text and "| etcd1 |" in text


@VERSIONS
@on_fleet
def test_flow_names_3_1_1_for_a_failed_member(fleet, cluster_block, etcd_version):
    fleet.fail_member(fleet.nodes[1])
    name = cluster_block()
    result = diagnose_cluster(name)
    assert result["case"] == "3.1.1" and result["quorum"], why(result)
    assert result["flow"] == "etcd-restore-member"
    assert result["parameters"] == {"failed_node": "etcd2", "healthy_node": "etcd1"}
    command = f"prefect deployment run etcd-restore-member/{name} -p failed_node=etcd2 -p healthy_node=etcd1"
    assert result["commands"] == [command]
    assert command in artifact_text("uk8s-diag")


@on_fleet
def test_flow_names_3_2_1_for_a_deleted_and_recreated_node(fleet, cluster_block):
    gone = fleet.nodes[2]
    fleet.delete_node(gone)
    fleet.recreate_node(gone)
    result = diagnose_cluster(cluster_block())  # the operator puts the new host key in the block
    assert result["case"] == "3.2.1", why(result)
    assert result["parameters"] == {"failed_node": "etcd3", "healthy_node": "etcd1"}
    assert result["nodes"][2]["state"] == "bare"


@on_fleet
def test_flow_says_to_recreate_a_deleted_node_first(fleet, cluster_block):
    fleet.delete_node(fleet.nodes[1])
    result = diagnose_cluster(cluster_block())
    assert result["case"] == "3.2.1" and result["nodes"][1]["state"] == "unreachable", why(result)
    assert result["parameters"] == {"failed_node": "etcd2", "healthy_node": "etcd1"}
    assert not result["actions"][0]["ready"] and "recreate the machine" in result["actions"][0]["note"]
    assert "recreate the machine" in artifact_text("uk8s-diag")


@on_fleet
def test_flow_names_3_1_2_when_quorum_is_lost_to_failures(fleet, cluster_block):
    fleet.lose_quorum("fail")
    result = diagnose_cluster(cluster_block())
    assert result["case"] == "3.1.2" and not result["quorum"], why(result)
    assert result["parameters"] == {"retained_node": "etcd1", "backup": "latest"}
    assert "etcd-restore-cluster" in artifact_text("uk8s-diag")


@VERSIONS
@on_fleet
def test_flow_names_3_2_2_when_quorum_is_lost_to_deleted_nodes(fleet, cluster_block, etcd_version):
    fleet.lose_quorum("delete")
    result = diagnose_cluster(cluster_block())
    assert result["case"] == "3.2.2" and not result["quorum"], why(result)
    assert result["flow"] == "etcd-restore-cluster"
    assert result["parameters"] == {"retained_node": "etcd1", "backup": "latest"}
    assert [n["state"] for n in result["nodes"]] == ["no quorum", "bare", "bare"]


@on_fleet
def test_what_diagnose_recommends_the_flows_accept_in_a_dry_run(fleet, cluster_block, tmp_path):
    pki = fleet.pki
    access = EtcdAccess(
        tuple(fleet.endpoints), ca=pki.ca.read_text(), cert=pki.cert.read_text(), key=pki.key.read_text()
    )
    pipeline.backup(access, LocalStore(tmp_path / "backups"), cluster_id="uk8s-diag")
    storage = f"diag-{secrets.token_hex(4)}"
    LocalStorage(directory=str(tmp_path / "backups")).save(storage)
    etcd1, etcd2, etcd3 = fleet.nodes
    with open(etcd1.path("/usr/bin/etcdctl"), "r+b") as f:  # etcd1 lost etcdctl (in place: a bind mount)
        f.truncate(0)
    fleet.fail_member(etcd2)
    name = cluster_block()
    kept = diagnose_cluster(name)  # quorum kept: etcd1 cannot be the source, etcd3 can
    assert kept["case"] == "3.1.1" and kept["parameters"] == {"failed_node": "etcd2", "healthy_node": "etcd3"}, why(
        kept
    )
    dry = restore_member(cluster=name, dry_run=True, return_state=True, **kept["parameters"])
    assert dry.is_completed(), dry.message
    fleet.fail_member(etcd3)
    lost = diagnose_cluster(name)  # quorum lost: etcd1 still runs etcd but lacks etcdctl, so etcd2 is retained
    assert lost["case"] == "3.1.2" and lost["parameters"] == {"retained_node": "etcd2", "backup": "latest"}, why(lost)
    assert any("etcd1 cannot be the source of etcd files: it lacks etcdctl_bin" in f for f in lost["findings"])
    dry = restore_cluster(
        cluster=name,
        storage=f"local-directory-storage/{storage}",
        dry_run=True,
        return_state=True,
        **lost["parameters"],
    )
    assert dry.is_completed(), dry.message
