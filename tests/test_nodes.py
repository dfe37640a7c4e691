"""Node over real SSH on the test fleet's master nodes (sshd per node IP in its own mount namespace)."""

import os
import subprocess

import pytest

from etcd_backup.cluster import SSHAccess
from etcd_backup.errors import NodeError
from etcd_backup.nodes import Node, Result, nodes_of

pytestmark = [pytest.mark.fleet, pytest.mark.root, pytest.mark.slow]

TREE_DIGEST = (
    "cd {d} && find . -type f | LC_ALL=C sort | xargs -d '\\n' sha256sum"
    " && find . | LC_ALL=C sort | xargs -d '\\n' stat -c '%n %a %U %s'"
)


@pytest.fixture
def fleet(module_fleet):
    """One fleet for the whole module (these tests write only their own files)."""
    return module_fleet


@pytest.fixture
def nodes(fleet):
    found = nodes_of(fleet.spec())
    yield found
    for node in found:
        node.close()


def test_run_sees_the_nodes_own_files(fleet, nodes):
    for node, fleet_node in zip(nodes, fleet.nodes, strict=True):
        result = node.run("cat /etc/etcd/etcd.conf")
        assert result.code == 0 and result.stdout == fleet_node.path("/etc/etcd/etcd.conf").read_text()
        assert f"ETCD_NAME={node.name}" in result.stdout.replace('"', "")
    assert str(nodes[1]) == f"{fleet.nodes[1].name} ({fleet.nodes[1].ip})"


def test_run_reports_exit_codes_env_and_failures(nodes):
    node = nodes[0]
    assert node.run("echo out; echo err >&2; exit 3", check=False) == Result("out\n", "err\n", 3)
    assert (
        node.run('echo "$ETCDCTL_CACERT"', env={"ETCDCTL_CACERT": "/etc/kubernetes/ssl/ca.pem"}).stdout
        == "/etc/kubernetes/ssl/ca.pem\n"
    )
    with pytest.raises(NodeError, match=r"\[run on etcd1 \(.*\)\] `ls /no/such/dir` exited 2: .*No such file"):
        node.run("ls /no/such/dir")


def test_run_times_out(nodes):
    with pytest.raises(NodeError, match="timed out"):
        nodes[0].run("sleep 30", timeout=1)
    assert nodes[0].run("echo still usable").stdout == "still usable\n"


def test_write_read_exists_in_place(fleet, nodes):
    node, path = nodes[0], "/etc/kubernetes/ssl/probe/blob.bin"
    data = os.urandom(3 * 1024 * 1024 + 7)
    assert not node.exists(path)
    assert node.exists("/usr/bin/etcd", nonempty=True) and node.exists("/etc/kubernetes/ssl")
    node.write(path, data, 0o600)
    assert node.exists(path) and node.read(path) == data
    host_copy = fleet.nodes[0].path(path)
    assert host_copy.read_bytes() == data and host_copy.stat().st_mode & 0o777 == 0o600
    inode = host_copy.stat().st_ino
    node.write(path, b"short")
    assert node.read(path) == b"short" and host_copy.stat().st_ino == inode
    assert not nodes[1].exists(path)
    with pytest.raises(NodeError, match="read on etcd1"):
        node.read("/etc/kubernetes/ssl/missing.pem")


def test_put_and_get_file(nodes, tmp_path):
    src, back = tmp_path / "src.bin", tmp_path / "back.bin"
    src.write_bytes(os.urandom(1_000_001))
    nodes[0].put_file(str(src), "/etc/kubernetes/put.bin", 0o640)
    assert nodes[0].get_file("/etc/kubernetes/put.bin", str(back)) == 1_000_001
    assert back.read_bytes() == src.read_bytes()
    assert nodes[0].run("stat -c %a /etc/kubernetes/put.bin").stdout.strip() == "640"


def test_copy_tree_relays_etc_kubernetes_byte_for_byte(nodes):
    one, two = nodes[0], nodes[1]
    one.write("/etc/kubernetes/extra/deep/file.bin", os.urandom(200_000), 0o640)
    before = one.run(TREE_DIGEST.format(d="/etc/kubernetes")).stdout
    assert before != two.run(TREE_DIGEST.format(d="/etc/kubernetes")).stdout
    one.copy_tree_to(two, "/etc/kubernetes")
    assert two.run(TREE_DIGEST.format(d="/etc/kubernetes")).stdout == before


def test_copy_file_keeps_mode(nodes):
    one, two = nodes[0], nodes[2]
    data = os.urandom(100_000)
    one.write("/etc/kubernetes/bin/tool", data, 0o755)
    one.copy_file_to(two, "/etc/kubernetes/bin/tool")
    assert two.read("/etc/kubernetes/bin/tool") == data
    assert two.run("stat -c %a /etc/kubernetes/bin/tool").stdout.strip() == "755"
    with pytest.raises(NodeError, match="copy on etcd1"):
        one.copy_tree_to(two, "/etc/kubernetes/no-such-dir", "/etc/kubernetes/target")


def test_unknown_host_key_is_refused_with_the_node_named(fleet):
    node = Node.of(fleet.spec(known_hosts=""), fleet.nodes[1].name)
    with pytest.raises(NodeError, match=r"\[ssh on etcd2 \(.*\)\] host key SHA256:\S+ .* is not in known_hosts") as err:
        node.run("true")
    assert "PRIVATE KEY" not in str(err.value)


def test_wrong_key_is_an_authentication_failure(fleet, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    spec = fleet.spec()
    spec.ssh = SSHAccess(private_key=(tmp_path / "k").read_text(), known_hosts=fleet.known_hosts)
    with pytest.raises(NodeError, match="authentication failed for root@"):
        Node.of(spec, fleet.nodes[0].name).run("true")
