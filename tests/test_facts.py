"""Node facts gathered over real SSH from the test fleet's master nodes."""

import pytest

from etcd_backup.cluster import ClusterSpec, MasterNode
from etcd_backup.facts import FILE_KEYS, NodeFacts, gather, parse, script

VERSIONS = pytest.mark.parametrize("etcd_version", ["3.5.1", "3.4.23"], indirect=True)


def test_parse_reads_the_scripts_output():
    out = (
        "etcd_bin=1\netcdctl_bin=1\netcdutl_bin=0\netcd_conf=1\nkubernetes_dir=1\ncerts=1\nunit=1\n"
        "data_dir=1\nversion=3.4.23\nactive=active\nfree=123456\n"
    )
    facts = parse(MasterNode(name="etcd1", ip="10.0.0.1"), out)
    assert facts == NodeFacts(
        name="etcd1",
        ip="10.0.0.1",
        reachable=True,
        files={**dict.fromkeys(FILE_KEYS, True), "etcdutl_bin": False},
        etcd_version="3.4.23",
        etcd_active=True,
        data_dir_present=True,
        free_bytes=123456,
    )
    assert facts.missing == ["etcdutl_bin"]


def test_parse_of_a_bare_node_and_an_unreachable_one():
    out = "\n".join(f"{k}=0" for k in FILE_KEYS) + "\nactive=inactive\nfree=\n"
    bare = parse(MasterNode(name="etcd2", ip="10.0.0.2"), out)
    assert bare.missing == list(FILE_KEYS) and not bare.etcd_active and bare.etcd_version is None
    assert bare.free_bytes is None and not bare.data_dir_present
    assert NodeFacts(name="etcd3", ip="10.0.0.3", reachable=False, error="x").missing == list(FILE_KEYS)


def test_script_quotes_the_layout_paths():
    assert "test -s /etc/etcd/etcd.conf" in script(
        ClusterSpec(cluster_id="c", ca_pem="", cert_pem="", key_pem="", endpoints=["https://a:2379"]).layout
    )


@pytest.mark.fleet
@pytest.mark.root
@pytest.mark.slow
@VERSIONS
def test_gather_on_a_healthy_fleet(fleet, etcd_version):
    facts = gather(fleet.spec("uk8s-facts"))
    assert [(f.name, f.ip) for f in facts] == [(n.name, n.ip) for n in fleet.nodes]
    for f in facts:
        assert f.reachable and f.error is None
        assert f.etcd_version == etcd_version and f.etcd_active and f.data_dir_present
        assert f.free_bytes and f.free_bytes > 0
        # etcdutl ships with etcd 3.5; 3.4 nodes have none.
        assert f.missing == ([] if etcd_version == "3.5.1" else ["etcdutl_bin"])


@pytest.mark.fleet
@pytest.mark.root
@pytest.mark.slow
def test_gather_on_failed_deleted_and_bare_nodes(fleet):
    failed, deleted, bare = fleet.nodes
    fleet.fail_member(failed)
    fleet.delete_node(deleted)
    old_known_hosts = fleet.known_hosts
    fleet.recreate_node(bare)

    by_name = {f.name: f for f in gather(fleet.spec("uk8s-facts"), timeout=10)}
    assert by_name[failed.name].reachable and not by_name[failed.name].etcd_active
    assert by_name[failed.name].missing == [] and by_name[failed.name].data_dir_present
    assert not by_name[deleted.name].reachable and by_name[deleted.name].error
    bare_facts = by_name[bare.name]
    assert bare_facts.reachable and not bare_facts.etcd_active and not bare_facts.data_dir_present
    assert bare_facts.missing == list(FILE_KEYS) and bare_facts.etcd_version is None

    stale = {f.name: f for f in gather(fleet.spec("uk8s-facts", known_hosts=old_known_hosts), timeout=10)}
    assert not stale[bare.name].reachable and "host key" in stale[bare.name].error
