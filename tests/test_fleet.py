"""The test fleet itself: real etcd clusters with TLS, master nodes in mount namespaces."""

import socket
from pathlib import Path

import psutil
import pytest

from tests.fleet import namespace
from tests.fleet.data import fill
from tests.fleet.layout import apiserver_conf, etcd_conf

VERSIONS = ["3.5.1", "3.4.23"]


def assert_three_healthy(health) -> None:
    """`etcdctl endpoint health` succeeded and reported three healthy members."""
    assert health.returncode == 0, health.stderr
    assert (health.stdout + health.stderr).count("is healthy") == 3


@pytest.mark.fleet
@pytest.mark.parametrize("etcd_version", VERSIONS, indirect=True)
def test_host_cluster_members_are_healthy_over_tls(etcd_cluster, etcd_version):
    assert_three_healthy(etcd_cluster.etcdctl("endpoint", "health"))
    for i in range(3):
        with etcd_cluster.client(i) as client:
            assert client.status().version == etcd_version


@pytest.mark.fleet
def test_host_cluster_keeps_data_across_a_member_restart(etcd_cluster):
    with etcd_cluster.client(0) as client:
        assert fill(client, 300, 1000) == 300_000
    etcd_cluster.stop_member(0)
    with etcd_cluster.client(1) as client:
        client.put("/registry/while-down", "yes")
    etcd_cluster.start_member(0)
    with etcd_cluster.client(0) as client:
        assert client.get("/registry/while-down")[0] == b"yes"
        assert len(list(client.get_prefix("/registry/configmaps/default/", keys_only=True))) == 300


@pytest.mark.fleet
@pytest.mark.slow
def test_host_clusters_of_one_and_five_members(make_etcd_cluster):
    single = make_etcd_cluster(members=1)
    five = make_etcd_cluster(members=5, version="3.4.23")
    assert len(single.etcdctl("member", "list").stdout.splitlines()) == 1
    assert len(five.etcdctl("member", "list").stdout.splitlines()) == 5
    assert not set(single.endpoints) & set(five.endpoints)


# --- master nodes (root: mount namespaces, sshd on the node IPs) ---

RUNBOOK_ENV = """export ETCDCTL_API=3
export ETCDCTL_CACERT=/etc/kubernetes/ssl/ca.pem
export ETCDCTL_CERT=/etc/kubernetes/ssl/etcd.pem
export ETCDCTL_KEY=/etc/kubernetes/ssl/etcd-key.pem
export ETCDCTL_ENDPOINTS={endpoints}
"""


def healthy(fleet, node) -> bool:
    out = fleet.etcdctl(f"--endpoints={node.client_url}", "endpoint", "health", "--command-timeout=3s")
    return out.returncode == 0


@pytest.mark.fleet
@pytest.mark.root
@pytest.mark.parametrize("etcd_version", VERSIONS, indirect=True)
def test_fleet_members_are_healthy_over_tls(fleet, etcd_version):
    assert_three_healthy(fleet.etcdctl("endpoint", "health"))
    with fleet.client() as client:
        assert client.status().version == etcd_version
        assert len(list(client.members)) == 3
    env = RUNBOOK_ENV.format(endpoints=",".join(f"{n.ip}:2379" for n in fleet.nodes))
    on_node = fleet.nodes[1].ssh(env + "etcdctl endpoint health 2>&1; etcdctl member list")
    assert on_node.stdout.count("is healthy") == 3
    assert "etcd2, https://" + fleet.nodes[1].ip + ":2380" in on_node.stdout


@pytest.mark.fleet
@pytest.mark.root
def test_each_node_sees_only_its_own_files(fleet):
    for node in fleet.nodes:
        seen = node.ssh(
            "cat /etc/etcd/etcd.conf /etc/kubernetes/apiserver; /usr/bin/etcd --version; "
            "test -x /usr/bin/etcdutl && ls /var/lib/etcd/default.etcd /etc/sysconfig/network-scripts"
        ).stdout
        assert f"ETCD_NAME={node.name}\n" in seen
        assert f'ETCD_LISTEN_CLIENT_URLS="https://{node.ip}:2379"' in seen
        assert f"--advertise-address={node.ip} \\\n" in seen
        assert "etcd Version: 3.5.1" in seen
        assert seen.endswith("ifcfg-lo:external\nifcfg-lo:internal\n\n/var/lib/etcd/default.etcd:\nmember\n")
    assert list(Path("/etc/etcd").iterdir()) == []
    assert list(Path("/etc/kubernetes").iterdir()) == []


@pytest.mark.fleet
@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("etcd_version", VERSIONS, indirect=True)
def test_systemctl_stand_in_stops_and_starts_etcd(fleet):
    node = fleet.nodes[2]
    with fleet.client() as client:
        client.put("/registry/kept", "yes")
    node.ssh("systemctl stop etcd")
    assert node.ssh("systemctl is-active etcd", check=False).stdout == "inactive\n"
    assert not healthy(fleet, node)
    node.ssh("systemctl start etcd")
    assert node.ssh("systemctl is-active etcd").stdout == "active\n"
    fleet.wait_healthy()
    with fleet.client() as client:
        assert client.get("/registry/kept")[0] == b"yes"
    node.ssh(
        "systemctl enable --now kube-apiserver kube-controller-manager kube-scheduler && systemctl restart network"
    )
    assert node.ssh("systemctl is-active kube-apiserver kube-scheduler").stdout == "active\nactive\n"
    verbs = [line.split(" ", 1)[1] for line in node.systemctl_log()]
    assert verbs[-6:] == [
        "stop etcd",
        "start etcd",
        "enable --now kube-apiserver",
        "enable --now kube-controller-manager",
        "enable --now kube-scheduler",
        "restart network",
    ]


@pytest.mark.fleet
@pytest.mark.slow
@pytest.mark.root
def test_fail_member_makes_it_unhealthy_while_quorum_holds(fleet):
    failed = fleet.nodes[0]
    fleet.fail_member(failed)
    assert not healthy(fleet, failed)
    fleet.wait_healthy(nodes=fleet.nodes[1:])
    with fleet.client() as client:
        client.put("/registry/after-failure", "written")
    start = failed.ssh("systemctl start etcd", check=False)
    assert start.returncode != 0
    assert "etcd.service failed" in start.stderr


@pytest.mark.fleet
@pytest.mark.root
def test_deleted_node_comes_back_bare_with_a_new_host_key(fleet):
    node = fleet.nodes[1]
    old_key = node.host_key
    fleet.delete_node(node)
    with pytest.raises(OSError):
        socket.create_connection((node.ip, 22), timeout=2)
    assert not node.root.exists()
    fleet.recreate_node(node)
    assert node.host_key != old_key
    assert f"{node.ip} {node.host_key}" in fleet.known_hosts
    bare = node.ssh("test -s /usr/bin/etcd || echo no-etcd; ls -A /etc/etcd /etc/kubernetes /var/lib")
    assert bare.stdout == "no-etcd\n/etc/etcd:\n\n/etc/kubernetes:\n\n/var/lib:\n"
    missing_unit = node.ssh("systemctl start etcd", check=False)
    assert missing_unit.returncode == 5 and "not found" in missing_unit.stderr
    fleet.wait_healthy(nodes=[fleet.nodes[0], fleet.nodes[2]])


@pytest.mark.fleet
@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fail", "delete"])
def test_lose_quorum_makes_the_cluster_unavailable(fleet, mode):
    keep = fleet.nodes[2]
    lost = fleet.lose_quorum(mode, keep=keep)
    assert lost == fleet.nodes[:2]
    put = fleet.etcdctl("put", "/registry/x", "y", "--command-timeout=3s")
    assert put.returncode != 0
    assert f"ETCD_NAME={keep.name}" in keep.ssh("cat /etc/etcd/etcd.conf").stdout
    bare = lost[0].ssh("test -s /etc/etcd/etcd.conf && echo has-config || echo no-config").stdout
    assert bare == ("has-config\n" if mode == "fail" else "no-config\n")


RUNBOOK_CONFIG_LOOP = """cp /etc/etcd/etcd.conf /etc/etcd/etcd.conf.bak
echo '' >/etc/etcd/etcd.conf
export FAILURE_ETCD_NAME={name}
export NORMAL_ETCD_NODE_IP={normal_ip}
export FAILURE_ETCD_NODE_IP={ip}
cat /etc/etcd/etcd.conf.bak | while read LINE; do
  if [[ $LINE == "ETCD_INITIAL_CLUSTER="* ]]; then
    echo $LINE >>/etc/etcd/etcd.conf
  elif [[ $LINE == "ETCD_INITIAL_CLUSTER_STATE="* ]]; then
    echo 'ETCD_INITIAL_CLUSTER_STATE="existing"' >>/etc/etcd/etcd.conf
  elif [[ $LINE == "ETCD_NAME="* ]]; then
    echo 'ETCD_NAME='$FAILURE_ETCD_NAME >>/etc/etcd/etcd.conf
  else
    echo $LINE | sed "s/$NORMAL_ETCD_NODE_IP/$FAILURE_ETCD_NODE_IP/g" >>/etc/etcd/etcd.conf
  fi
done
sed -i 's/\\(advertise-address=\\).*\\( \\)/\\1'$FAILURE_ETCD_NODE_IP'\\2/' /etc/kubernetes/apiserver
rm -rf /var/lib/etcd
mkdir -p /var/lib/etcd/default.etcd
"""


@pytest.mark.fleet
@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("etcd_version", VERSIONS, indirect=True)
def test_runbook_member_replacement_works_by_hand_on_the_fleet(fleet):
    healthy_node, failed = fleet.nodes[0], fleet.nodes[1]
    cluster = {node.name: node.ip for node in fleet.nodes}
    with fleet.client() as client:
        fill(client, 50, 200)
    fleet.fail_member(failed)
    fleet.wait_healthy(nodes=[healthy_node, fleet.nodes[2]])  # the runbook's step 2: endpoint health first
    env = RUNBOOK_ENV.format(endpoints=",".join(f"{n.ip}:2379" for n in fleet.nodes))
    members = healthy_node.ssh(env + "etcdctl member list").stdout
    member_id = next(line.split(",")[0] for line in members.splitlines() if f" {failed.name}," in line)
    healthy_node.ssh(env + f"etcdctl member remove {member_id}")
    for path in ("/etc/etcd/etcd.conf", "/etc/kubernetes/apiserver"):
        failed.ssh(f"cat > {path}", input=healthy_node.ssh(f"cat {path}").stdout)
    failed.ssh(RUNBOOK_CONFIG_LOOP.format(name=failed.name, normal_ip=healthy_node.ip, ip=failed.ip))
    assert failed.path("/etc/etcd/etcd.conf").read_text() == "\n" + etcd_conf(
        failed.name, failed.ip, cluster, "existing"
    )
    assert failed.path("/etc/kubernetes/apiserver").read_text() == apiserver_conf(failed.ip, cluster)
    # etcd refuses "member add" ("unhealthy cluster") until the peers have been connected for 5 s: retry.
    add = f"etcdctl member add {failed.name} --peer-urls=https://{failed.ip}:2380"
    healthy_node.ssh(env + f"for i in $(seq 60); do {add} && exit 0; sleep 0.5; done; exit 1")
    failed.ssh("systemctl enable --now etcd")
    fleet.wait_healthy()
    with failed.client() as client:
        assert len(list(client.get_prefix("/registry/configmaps/default/", keys_only=True))) == 50


@pytest.mark.fleet
@pytest.mark.root
@pytest.mark.slow
def test_stopped_fleet_leaves_no_processes_or_listening_ports(make_fleet):
    fleet = make_fleet(size=5, version="3.4.23")
    assert len(fleet.etcdctl("member", "list").stdout.splitlines()) == 5
    fleet.nodes[0].ssh("setsid sleep 600 >/dev/null 2>&1 < /dev/null &")
    started = [psutil.Process(pid) for node in fleet.nodes for pid in namespace.members(node.namespace)]
    assert len(started) >= 11
    ips = {node.ip for node in fleet.nodes}
    fleet.stop()
    assert [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    listening = [
        c.laddr for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.laddr.ip in ips
    ]
    assert listening == []
