"""Pure parts of the member replacement: the checks that refuse, the order of the steps, the commands they run."""

from __future__ import annotations

import dataclasses

import pytest

from etcd_backup.cluster import ClusterSpec
from etcd_backup.errors import RestoreRefused
from etcd_backup.etcd import MemberInfo
from etcd_backup.facts import FILE_KEYS, NodeFacts
from etcd_backup.restore.actions import Relay, Run, Write
from etcd_backup.restore.facts import RestoreFacts
from etcd_backup.restore.member import plan_member_replacement
from etcd_backup.restore.plan import RestoreOptions
from tests.factories import cluster_spec

pytestmark = pytest.mark.restore

IPS = {"etcd1": "10.23.17.200", "etcd2": "10.23.97.19", "etcd3": "10.23.207.11"}
IDS = {"etcd1": 0x8A190C41D92119CB, "etcd2": 0x45B4CED6B6A33EF5, "etcd3": 0x1D3F61116D4F3128}
INITIAL = ",".join(f"{n}=https://{ip}:2380" for n, ip in IPS.items())
CONF = f"""#[Member]
ETCD_NAME=etcd1
ETCD_DATA_DIR="/var/lib/etcd/default.etcd"
ETCD_LISTEN_PEER_URLS="https://10.23.17.200:2380"
ETCD_ADVERTISE_CLIENT_URLS="https://10.23.17.200:2379"
ETCD_INITIAL_CLUSTER="{INITIAL}"
ETCD_INITIAL_CLUSTER_STATE="new"
ETCD_INITIAL_CLUSTER_TOKEN="etcd-cluster"
"""
OPTIONS = RestoreOptions(run_id="20240101T000000Z")


def spec() -> ClusterSpec:
    return cluster_spec(IPS)


def facts(name: str, *, files: bool = True, reachable: bool = True, active: bool = True) -> RestoreFacts:
    have = {k: files for k in FILE_KEYS}
    base = NodeFacts(
        name=name,
        ip=IPS[name],
        reachable=reachable,
        error=None if reachable else "host key mismatch",
        files=have if reachable else {},
        etcd_version="3.5.1" if files else None,
        etcd_active=active and files,
        data_dir_present=files,
        free_bytes=50 << 30,
    )
    cp = {
        k: files
        for k in ("hyperkube", "kubectl", "kubeconfig", "apiserver_conf", "ifcfg-lo:internal", "ifcfg-lo:external")
    }
    conf = CONF.replace("etcd1", name).replace(IPS["etcd1"], IPS[name]) if files else None
    return RestoreFacts(
        node=base, conf_text=conf, etcd_enabled=files, files=cp, kube_units=("kube-apiserver.service",) if files else ()
    )


def members(*names: str) -> list[MemberInfo]:
    return [
        MemberInfo(
            id=IDS[n],
            name=n,
            peer_urls=(f"https://{IPS[n]}:2380",),
            client_urls=(f"https://{IPS[n]}:2379",),
            is_learner=False,
        )
        for n in names
    ]


def health(*down: str) -> dict[str, str]:
    return {f"https://{ip}:2379": "deadline exceeded" if n in down else "ok" for n, ip in IPS.items()}


def cluster_facts(failed_files: bool = True) -> list[RestoreFacts]:
    return [facts("etcd1"), facts("etcd2", files=failed_files, active=False), facts("etcd3")]


def plan(failed="etcd2", healthy=None, member_list=None, state=None, node_facts=None, options=OPTIONS):
    return plan_member_replacement(
        spec(),
        node_facts or cluster_facts(),
        members("etcd1", "etcd2", "etcd3") if member_list is None else member_list,
        state or health("etcd2"),
        failed,
        healthy,
        options,
    )


def runs(p, phase):
    return [a.cmd for s in p.steps if s.phase == phase for a in s.actions if isinstance(a, Run)]


def test_membership_changes_come_last_after_every_undoable_preparation():
    p = plan()
    assert [ph for ph, _ in p.phases()] == [
        "stop",
        "refill",
        "configure",
        "set-aside",
        "remove",
        "add",
        "start",
        "check",
    ]
    assert p.info["healthy"] == "etcd1" and p.info["remove_id"] == "45b4ced6b6a33ef5"
    assert {s.node for s in p.steps if s.phase in ("remove", "add")} == {"etcd1"}
    assert {s.node for s in p.steps if s.phase in ("stop", "refill", "configure", "set-aside", "start")} == {"etcd2"}
    (remove,) = runs(p, "remove")
    assert "/usr/bin/etcdctl member remove 45b4ced6b6a33ef5 2>&1" in remove
    assert '*"request timed out"*' in remove and '*"member not found"*) echo "$out"; exit 0' in remove
    assert "ETCDCTL_CACERT=/etc/kubernetes/ssl/ca.pem" in remove and "ETCDCTL_API=3" in remove
    assert "https://10.23.97.19:2379" not in remove  # only healthy endpoints
    (add,) = runs(p, "add")
    assert "member add etcd2 --peer-urls=https://10.23.97.19:2380" in add and "unhealthy cluster" in add
    assert runs(p, "start") == ["systemctl enable --now etcd"]
    (remove_step,) = [s for s in p.steps if s.phase == "remove"]
    assert remove_step.undo == () and remove_step.irreversible  # honest: cannot be undone
    assert remove_step.name == "member remove 45b4ced6b6a33ef5 (etcd2) @ etcd1" and remove_step.repeatable
    assert not [s for s in p.steps if s.phase == "add"][0].repeatable  # a second add would double-apply
    assert [s.name for s in p.steps if s.phase == "check"] == ["wait healthy", "check member list", "count keys"]


def test_runbook_files_are_copied_and_etcd_conf_rewritten_for_the_failed_node():
    p = plan()
    relays = [a for s in p.steps for a in s.actions if isinstance(a, Relay)]
    assert {(r.source, r.path, r.tree) for r in relays} == {
        ("etcd1", "/usr/bin/etcd", False),
        ("etcd1", "/usr/bin/etcdctl", False),
        ("etcd1", "/usr/bin/etcdutl", False),
        ("etcd1", "/etc/etcd", True),
        ("etcd1", "/etc/kubernetes", True),
        ("etcd1", "/usr/lib/systemd/system/etcd.service", False),
    }
    (conf,) = [a.text for s in p.steps for a in s.actions if isinstance(a, Write)]
    assert "ETCD_NAME=etcd2\n" in conf and 'ETCD_INITIAL_CLUSTER_STATE="existing"' in conf
    assert f'ETCD_INITIAL_CLUSTER="{INITIAL}"' in conf and 'ETCD_INITIAL_CLUSTER_TOKEN="etcd-cluster"' in conf
    assert 'ETCD_LISTEN_PEER_URLS="https://10.23.97.19:2380"' in conf
    assert "10.23.17.200" not in conf.replace(INITIAL, "")
    assert any("advertise-address=" in cmd and "10.23.97.19" in cmd for cmd in runs(p, "refill"))
    assert any(
        "if [ -e /var/lib/etcd ]; then mv /var/lib/etcd /var/lib/etcd.bak-20240101T000000Z" in cmd
        for cmd in runs(p, "set-aside")
    )
    assert all(s.undo for s in p.steps if s.phase in ("refill", "configure", "set-aside", "add", "start"))
    assert "copy /etc/kubernetes etcd1 -> etcd2" in [s.name for s in p.steps]


def test_bare_recreated_node_has_no_etcd_to_stop_and_gets_the_control_plane():
    p = plan(
        node_facts=cluster_facts(failed_files=False),
        options=RestoreOptions(run_id="20240101T000000Z", restore_control_plane=True),
    )
    assert "stop" not in dict(p.phases())
    cmds = runs(p, "kubernetes")
    assert "systemctl enable --now kube-apiserver kube-controller-manager kube-scheduler" in cmds
    assert "systemctl restart network" in cmds and any("advertise-address=" in c for c in cmds)
    assert [ph for ph, _ in p.phases()][-2:] == ["check", "kubernetes"]


def test_member_removed_by_an_earlier_attempt_is_only_added():
    p = plan(member_list=members("etcd1", "etcd3"))
    assert p.info["remove_id"] is None and "remove" not in dict(p.phases())
    assert p.info["initial_cluster"] == INITIAL


def test_unstarted_member_of_an_earlier_attempt_is_matched_by_peer_url():
    left = MemberInfo(id=0xABC, name="", peer_urls=("https://10.23.97.19:2380",), client_urls=(), is_learner=False)
    p = plan(member_list=[*members("etcd1", "etcd3"), left])
    assert p.info["remove_id"] == "abc"


def test_refuses_when_quorum_is_lost_and_points_to_the_cluster_restore():
    with pytest.raises(RestoreRefused, match="etcd-restore-cluster"):
        plan(state=health("etcd2", "etcd3"))
    with pytest.raises(RestoreRefused, match="etcd-restore-cluster"):
        plan(member_list=[], state=health("etcd1", "etcd2", "etcd3"))


def test_refuses_a_node_that_is_not_in_the_cluster():
    with pytest.raises(RestoreRefused, match="'etcd9' is not a node of cluster uk8s-x"):
        plan(failed="etcd9")


def test_refuses_to_replace_a_healthy_member():
    with pytest.raises(RestoreRefused, match="etcd2 answers health checks"):
        plan(state=health())


def test_refuses_when_the_others_would_lose_quorum_once_it_is_added():
    IPS["etcd4"], IDS["etcd4"] = "10.0.0.4", 4
    try:  # four nodes, etcd2 removed before and etcd4 down: 2 of 3 is quorum now, 2 of 4 is not once etcd2 is added
        with pytest.raises(RestoreRefused, match="would leave no quorum"):
            plan(
                member_list=members("etcd1", "etcd3", "etcd4"),
                state=health("etcd2", "etcd4"),
                node_facts=[facts(n) for n in IPS],
            )
    finally:
        del IPS["etcd4"], IDS["etcd4"]


def test_refuses_an_unreachable_failed_node_or_unusable_healthy_node():
    stale = [facts("etcd1"), facts("etcd2", reachable=False), facts("etcd3")]
    with pytest.raises(RestoreRefused, match="verified host key: host key mismatch"):
        plan(node_facts=stale)
    with pytest.raises(RestoreRefused, match="healthy node 'etcd2' is not another node"):
        plan(healthy="etcd2")
    with pytest.raises(RestoreRefused, match="cannot use etcd3 as the healthy node: not reachable.*host key mismatch"):
        plan(healthy="etcd3", node_facts=[facts("etcd1"), facts("etcd2"), facts("etcd3", reachable=False)])
    assert plan(healthy="10.23.207.11").info["healthy"] == "etcd3"


def test_refuses_while_a_node_holds_a_run_that_never_finished():
    run = "/var/lib/etcd-restore-20231231T000000Z"
    left = [facts("etcd1"), dataclasses.replace(facts("etcd2", active=False), unfinished=(run,)), facts("etcd3")]
    refused = r"^\[check leftovers\] restore run 20231231T000000Z never finished on etcd2"
    with pytest.raises(RestoreRefused, match=refused):
        plan(node_facts=left)


def test_refuses_a_member_list_that_does_not_match_the_block():
    odd = MemberInfo(id=7, name="etcd7", peer_urls=("https://10.9.9.9:2380",), client_urls=(), is_learner=False)
    with pytest.raises(RestoreRefused, match="not a node of the cluster block"):
        plan(
            member_list=[*members("etcd1", "etcd2", "etcd3"), odd],
            state={**health("etcd2"), "https://10.9.9.9:2379": "ok"},
        )


def test_endpoints_written_as_host_names_are_matched_to_their_nodes(monkeypatch):
    names = {f"master-{i}.example": ip for i, ip in enumerate(IPS.values(), 1)}
    monkeypatch.setattr("etcd_backup.recovery.resolve", lambda host: frozenset({names.get(host, host)}))
    by_name = {
        f"https://{name}:2379": ("deadline exceeded" if ip == IPS["etcd2"] else "ok") for name, ip in names.items()
    }
    p = plan(state=by_name)
    assert p.info["healthy"] == "etcd1" and p.info["remove_id"] == "45b4ced6b6a33ef5"
    (remove,) = runs(p, "remove")
    assert "ETCDCTL_ENDPOINTS=https://master-1.example:2379,https://master-3.example:2379" in remove
    with pytest.raises(RestoreRefused, match="etcd2 answers health checks"):
        plan(state=dict.fromkeys(by_name, "ok"))


def _script(path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_membership_commands_wait_out_an_election_and_accept_an_already_removed_member(tmp_path):
    import subprocess

    from etcd_backup.restore.member import retrying

    count = tmp_path / "count"
    flaky = _script(
        tmp_path / "flaky",
        f"n=$(cat {count} 2>/dev/null || echo 0); echo $((n+1)) > {count}\n"
        'if [ "$n" -lt 1 ]; then echo "Error: etcdserver: request timed out"; exit 1; fi\n'
        'echo "Member 45b4ced6b6a33ef5 removed"\n',
    )
    done = _script(tmp_path / "done", 'echo "Error: etcdserver: member not found"; exit 1\n')
    broken = _script(tmp_path / "broken", 'echo "Error: permission denied"; exit 1\n')
    run = lambda cmd: subprocess.run(["bash", "-c", retrying(cmd, tries=3)], capture_output=True, text=True)  # noqa: E731
    assert run(flaky).returncode == 0 and count.read_text() == "2\n"
    assert run(done).returncode == 1  # without done_if, "not found" is an error
    assert subprocess.run(["bash", "-c", retrying(done, done_if="member not found")]).returncode == 0
    failed = run(broken)
    assert failed.returncode == 1 and "permission denied" in failed.stderr
