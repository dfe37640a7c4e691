"""The one recovery model: quorum, health entries matched to nodes, the source-of-files rule, and diagnose's advice.

The consistency test builds node facts for every combination the test fleet can produce
on three masters and checks that etcd-diagnose only recommends runs the recommended flow
accepts, exactly as its dry run would plan them (and that what it marks as blocked, or
cannot recover automatically, is refused by that flow too).
"""

from __future__ import annotations

import itertools

import pytest

from etcd_backup import flow_names, recovery
from etcd_backup.cluster import ClusterSpec, MasterNode
from etcd_backup.diagnose import HEALTHY, MANUAL, diagnose
from etcd_backup.errors import RestoreRefused
from etcd_backup.etcd import MemberInfo
from etcd_backup.facts import FILE_KEYS, NodeFacts
from etcd_backup.pipeline import VerifyResult
from etcd_backup.restore.cluster import plan_cluster_restore, refuse_if_quorum
from etcd_backup.restore.facts import RestoreFacts
from etcd_backup.restore.member import plan_member_replacement
from etcd_backup.restore.plan import RestoreOptions
from tests.factories import cluster_spec

pytestmark = pytest.mark.restore

IPS = {"etcd1": "10.0.0.1", "etcd2": "10.0.0.2", "etcd3": "10.0.0.3"}
SPEC = cluster_spec(IPS)
SNAP = VerifyResult(
    key="uk8s-x-backup-etcd-3.5.1-2024-01-01T00-00-00.db", size=1, sha256="a", raw_size=1, raw_sha256="b"
)
OPTIONS = RestoreOptions(run_id="20240101T000000Z")
CONF = 'ETCD_NAME=etcd1\nETCD_LISTEN_PEER_URLS="https://10.0.0.1:2380"\n'

# What the fleet can do to one node: (files it lacks, etcd running, reachable over SSH).
CONDITIONS = {
    "running": ((), True, True),
    "stopped": ((), False, True),
    "no etcdctl, running": (("etcdctl_bin",), True, True),
    "no etcdctl, stopped": (("etcdctl_bin",), False, True),
    "no unit, running": (("unit",), True, True),
    "no unit, stopped": (("unit",), False, True),
    "no certs, running": (("certs",), True, True),
    "no certs, stopped": (("certs",), False, True),
    "data dir gone": (("data",), False, True),
    "bare": (tuple(FILE_KEYS) + ("data",), False, True),
    "unreachable, running": ((), True, False),
    "unreachable, stopped": ((), False, False),
}


def node(name: str, condition: str) -> RestoreFacts:
    lacks, running, reachable = CONDITIONS[condition]
    if not reachable:
        return RestoreFacts(NodeFacts(name=name, ip=IPS[name], reachable=False, error="NoValidConnectionsError"))
    files = {k: k not in lacks for k in FILE_KEYS}
    base = NodeFacts(
        name=name,
        ip=IPS[name],
        reachable=True,
        files=files,
        etcd_version="3.5.1" if files["etcd_bin"] else None,
        etcd_active=running,
        data_dir_present="data" not in lacks,
        free_bytes=50 << 30,
    )
    conf = CONF.replace("etcd1", name).replace(IPS["etcd1"], IPS[name]) if files["etcd_conf"] else None
    return RestoreFacts(node=base, conf_text=conf, etcd_enabled=files["unit"], files={"zstd": True})


def cluster_state(conditions: tuple[str, ...]) -> tuple[list[RestoreFacts], dict[str, str], list[MemberInfo] | None]:
    """Facts, endpoint health and member list of three nodes in these conditions, as etcd would answer."""
    facts = [node(n, c) for n, c in zip(IPS, conditions, strict=True)]
    running = [n for n, c in zip(IPS, conditions, strict=True) if CONDITIONS[c][1]]
    quorum = len(running) > len(IPS) // 2
    health = {
        f"https://{ip}:2379": "ok" if quorum and n in running else "UNAVAILABLE: connection refused"
        for n, ip in IPS.items()
    }
    members = [
        MemberInfo(i + 1, n, (f"https://{ip}:2380",), (f"https://{ip}:2379",), False)
        for i, (n, ip) in enumerate(IPS.items())
    ]
    return facts, health, members if quorum else None


def accepted(flow: str, params: dict, facts, health, members) -> str | None:
    """None when the flow's checks and planner (what its dry run runs) accept the parameters, else the refusal."""
    try:
        if flow == flow_names.RESTORE_MEMBER:
            plan_member_replacement(
                SPEC, facts, members, health, params["failed_node"], params.get("healthy_node"), OPTIONS
            )
        else:
            refuse_if_quorum(SPEC, health, force=False, members=len(members) if members else None)
            plan_cluster_restore(SPEC, facts, SNAP, params.get("retained_node"), "tok", OPTIONS)
    except RestoreRefused as exc:
        return exc.message
    return None


def test_diagnose_only_recommends_runs_the_flow_accepts():
    seen = set()
    for conditions in itertools.product(CONDITIONS, repeat=3):
        facts, health, members = cluster_state(conditions)
        d = diagnose(SPEC, facts, health, members)
        seen.add(d.case)
        for action in d.actions:
            refusal = accepted(action.flow, action.parameters, facts, health, members)
            if action.ready:
                assert refusal is None, (conditions, action, refusal)
            else:
                assert refusal is not None, (conditions, action)
        if d.case == MANUAL:  # nothing to recommend: the flows, left to choose, refuse too
            flow = flow_names.RESTORE_MEMBER if d.quorum else flow_names.RESTORE_CLUSTER
            broken = [f.name for f in d.nodes if f.state != "healthy"] or ["etcd1"]
            assert all(accepted(flow, {"failed_node": b}, facts, health, members) for b in broken), conditions
        if d.case == HEALTHY:
            assert d.actions == ()
    assert seen == {HEALTHY, MANUAL, "3.1.1", "3.2.1", "3.1.2", "3.2.2"}


# --- the rules themselves -------------------------------------------------------------------------------------


def test_health_entries_match_nodes_by_host_and_port_whether_ips_or_names():
    names = {"master-1.example": "10.0.0.1", "master-2.example": "10.0.0.2"}

    def resolver(host):
        return frozenset({names[host]}) if host in names else frozenset()

    health = {
        "https://master-1.example:2379": "ok",
        "https://10.0.0.1:2379": "ok",  # the same node again, by IP
        "master-2.example:2379": "DEADLINE_EXCEEDED",
        "https://10.0.0.3:2380": "ok",  # a peer port is not the client endpoint
    }
    assert recovery.node_health(SPEC, health, resolver) == {
        "etcd1": "ok",
        "etcd2": "DEADLINE_EXCEEDED",
        "etcd3": "not checked",
    }
    assert recovery.answering(SPEC, health, resolver) == 2  # etcd1 once, plus an endpoint of no node
    assert not recovery.has_quorum(
        SPEC, {"https://master-1.example:2379": "ok", "https://10.0.0.1:2379": "ok"}, 3, resolver
    )


def test_real_name_resolution_is_used_by_default():
    spec = ClusterSpec(
        cluster_id="x", ca_pem="c", cert_pem="c", key_pem="k", nodes=[MasterNode(name="a", ip="127.0.0.1")]
    )
    assert recovery.is_node_endpoint(spec, spec.nodes[0], "https://localhost:2379")
    assert not recovery.is_node_endpoint(spec, spec.nodes[0], "https://no-such-host.invalid:2379")


def test_source_rule_gives_a_reason_for_every_node_it_passes_over():
    facts = [node("etcd1", "no unit, running"), node("etcd2", "unreachable, running"), node("etcd3", "stopped")]
    chosen, reasons = recovery.choose_source(facts)
    assert chosen is not None and chosen.name == "etcd3"
    assert reasons == {"etcd1": "it lacks unit", "etcd2": "not reachable over SSH: NoValidConnectionsError"}
    chosen, reasons = recovery.choose_source(facts, healthy={"etcd1": True, "etcd2": True, "etcd3": False})
    assert chosen is None and reasons["etcd3"] == "its etcd member does not answer health checks"
    running = [node("etcd1", "stopped"), node("etcd2", "running"), node("etcd3", "data dir gone")]
    assert recovery.choose_source(running)[0].name == "etcd2"  # running etcd ranks first
