"""First run on the test fleet: discover() builds the spec from one master; the CLI saves a block that loads back."""

import os
import subprocess
import sys

import pytest
from prefect.settings import PREFECT_API_URL

from blocks import EtcdCluster
from blocks.first_run import first_run
from etcd_backup.cluster import NodeLayout, SSHAccess
from etcd_backup.discover import check_nodes, discover, parse_env_file
from etcd_backup.errors import NodeError

pytestmark = [pytest.mark.fleet, pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def shared_fleet(module_fleet):
    """One running fleet for the read-only tests of this module."""
    return module_fleet


def _access(fleet, known_hosts: str | None = None) -> SSHAccess:
    return SSHAccess(
        private_key=fleet.ssh_private_key, known_hosts=fleet.known_hosts if known_hosts is None else known_hosts
    )


def _assert_spec_is_the_fleet(spec, fleet):
    assert [(n.name, n.ip, n.ssh_port) for n in spec.nodes] == [(n.name, n.ip, 22) for n in fleet.nodes]
    assert spec.endpoints == fleet.endpoints
    assert spec.ca_pem == fleet.pki.ca.read_text() and spec.cert_pem == fleet.pki.cert.read_text()
    assert spec.key_pem.get_secret_value() == fleet.pki.key.read_text()
    assert spec.initial_cluster() == ",".join(f"{n.name}={n.peer_url}" for n in fleet.nodes)


def test_discover_builds_the_spec_from_one_master(shared_fleet):
    spec = discover(shared_fleet.nodes[1].ip, access=_access(shared_fleet), cluster_id="uk8s-f1wymalx")
    assert spec.cluster_id == "uk8s-f1wymalx" and spec.layout == NodeLayout()
    _assert_spec_is_the_fleet(spec, shared_fleet)
    assert check_nodes(spec) == {}


def _first_run(fleet, key, known, name: str, *extra: str) -> subprocess.CompletedProcess:
    """`python -m blocks.first_run` against node 1 of the fleet, as a user runs it."""
    argv = [sys.executable, "-m", "blocks.first_run", "--host", fleet.nodes[0].ip, "--ssh-key", str(key)]
    argv += ["--known-hosts", str(known), "--cluster-id", "uk8s-fleet", "--name", name, *extra]
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value())
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)


def test_first_run_cli_saves_a_block_that_loads_back(shared_fleet, prefect_api, tmp_path):
    key, known = tmp_path / "id_ed25519", tmp_path / "known_hosts"
    key.write_text(shared_fleet.ssh_private_key)
    known.write_text(shared_fleet.known_hosts)
    done = _first_run(shared_fleet, key, known, "fleet-prod", "--overwrite")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "saved etcd-cluster/fleet-prod: uk8s-fleet, 3 masters: etcd1" in done.stdout
    assert "PRIVATE KEY" not in done.stdout + done.stderr
    block = EtcdCluster.load("fleet-prod")
    _assert_spec_is_the_fleet(block.spec(), shared_fleet)
    assert block.spec().ssh.private_key.get_secret_value() == shared_fleet.ssh_private_key
    assert block.known_hosts == shared_fleet.known_hosts


def test_cli_refuses_an_unknown_host_key(shared_fleet, prefect_api, tmp_path):
    key, known = tmp_path / "id_ed25519", tmp_path / "known_hosts"
    key.write_text(shared_fleet.ssh_private_key)
    known.write_text("")
    done = _first_run(shared_fleet, key, known, "never-saved")
    assert done.returncode == 2
    assert "is not in known_hosts" in done.stderr and "Traceback" not in done.stderr


def test_first_run_needs_every_masters_host_key(shared_fleet, prefect_api):
    only_first = shared_fleet.known_hosts.splitlines()[0] + "\n"
    with pytest.raises(NodeError, match=r"some masters are not usable: etcd2 \(.*\): host key .* not in known_hosts"):
        first_run(
            shared_fleet.nodes[0].ip,
            cluster_id="c",
            name="partial",
            known_hosts=only_first,
            private_key=shared_fleet.ssh_private_key,
        )


def test_discover_reports_auth_failure_and_missing_files(shared_fleet, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    stranger = SSHAccess(private_key=(tmp_path / "k").read_text(), known_hosts=shared_fleet.known_hosts)
    with pytest.raises(NodeError, match="authentication failed for root@"):
        discover(shared_fleet.nodes[0].ip, access=stranger, cluster_id="c")
    moved = NodeLayout(cert="/etc/kubernetes/ssl/missing-etcd.pem")
    with pytest.raises(
        NodeError, match=r"\[discover on .*\] etcd client certificate /etc/kubernetes/ssl/missing-etcd.pem is missing"
    ):
        discover(shared_fleet.nodes[0].ip, access=_access(shared_fleet), cluster_id="c", layout=moved)


def test_discover_falls_back_to_etcd_conf_when_etcd_is_down(fleet):
    fleet.on_nodes(fleet.nodes, "systemctl stop etcd")
    spec = discover(fleet.nodes[2].ip, access=_access(fleet), cluster_id="uk8s-down")
    _assert_spec_is_the_fleet(spec, fleet)


def test_parse_env_file():
    text = (
        '#[Member]\nETCD_NAME=etcd1\nETCD_INITIAL_CLUSTER="etcd1=https://10.0.0.1:2380,etcd2=https://10.0.0.2:2380"\n'
        "\n# x=y\n"
    )
    assert parse_env_file(text) == {
        "ETCD_NAME": "etcd1",
        "ETCD_INITIAL_CLUSTER": "etcd1=https://10.0.0.1:2380,etcd2=https://10.0.0.2:2380",
    }
