"""What a UK8S master node's files look like: the tree under a node's host dir.

A node dir N mirrors the node's paths: N/etc/etcd/etcd.conf is /etc/etcd/etcd.conf on
the node. Only the paths in MOUNTS are the node's own; everything else (/tmp, /usr/bin/*,
...) is the host's, shared by every node. N/.state holds what the fleet needs to run the
node (sshd config and host key, the systemctl wrapper, pid files, logs).
"""

import shutil
from pathlib import Path

from .binaries import EtcdBinaries

# node path -> is a directory; each is bind-mounted from N/<path> inside the node.
MOUNTS = {
    "/etc/etcd": True,
    "/var/lib": True,
    "/etc/kubernetes": True,
    "/usr/lib/systemd/system": True,
    "/etc/sysconfig/network-scripts": True,
    "/root": True,
    "/usr/bin/etcd": False,
    "/usr/bin/etcdctl": False,
    "/usr/bin/etcdutl": False,
    "/usr/local/bin/hyperkube": False,
    "/usr/local/bin/kubectl": False,
}
SYSTEMCTL = Path(__file__).with_name("systemctl")
SSL = "/etc/kubernetes/ssl"

ETCD_UNIT = """[Unit]
Description=Etcd Server
After=network.target
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
WorkingDirectory=/var/lib/etcd/
EnvironmentFile=-/etc/etcd/etcd.conf
ExecStart=/usr/bin/etcd
Restart=on-failure
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"""

KUBE_UNIT = """[Unit]
Description=Kubernetes {title}
After=network.target etcd.service

[Service]
EnvironmentFile=-/etc/kubernetes/{config}
ExecStart=/usr/local/bin/hyperkube {name} ${var}
Restart=on-failure
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"""

STAND_IN = '#!/bin/sh\n# fleet stand-in for {name}\necho "{name} (fleet stand-in) $*"\n'


def etcd_conf(name: str, ip: str, cluster: dict[str, str], state: str = "new") -> str:
    """Return /etc/etcd/etcd.conf of member `name` at `ip` in `cluster` (name -> ip), UK8S style."""
    initial = ",".join(f"{n}=https://{addr}:2380" for n, addr in cluster.items())
    return f"""#[Member]
ETCD_NAME={name}
ETCD_DATA_DIR="/var/lib/etcd/default.etcd"
ETCD_LISTEN_PEER_URLS="https://{ip}:2380"
ETCD_LISTEN_CLIENT_URLS="https://{ip}:2379"
#[Clustering]
ETCD_INITIAL_ADVERTISE_PEER_URLS="https://{ip}:2380"
ETCD_ADVERTISE_CLIENT_URLS="https://{ip}:2379"
ETCD_INITIAL_CLUSTER="{initial}"
ETCD_INITIAL_CLUSTER_STATE="{state}"
ETCD_INITIAL_CLUSTER_TOKEN="etcd-cluster"
#[Security]
ETCD_CERT_FILE="{SSL}/etcd.pem"
ETCD_KEY_FILE="{SSL}/etcd-key.pem"
ETCD_TRUSTED_CA_FILE="{SSL}/ca.pem"
ETCD_CLIENT_CERT_AUTH="true"
ETCD_PEER_CERT_FILE="{SSL}/etcd.pem"
ETCD_PEER_KEY_FILE="{SSL}/etcd-key.pem"
ETCD_PEER_TRUSTED_CA_FILE="{SSL}/ca.pem"
ETCD_PEER_CLIENT_CERT_AUTH="true"
"""


def apiserver_conf(ip: str, cluster: dict[str, str]) -> str:
    """Return /etc/kubernetes/apiserver; `--advertise-address=<ip> ` keeps the space the runbook's sed needs."""
    servers = ",".join(f"https://{addr}:2379" for addr in cluster.values())
    return f"""###
# kubernetes system config: kube-apiserver
KUBE_APISERVER_OPTS="--logtostderr=true \\
--advertise-address={ip} \\
--bind-address=0.0.0.0 \\
--secure-port=6443 \\
--etcd-servers={servers} \\
--etcd-cafile={SSL}/ca.pem \\
--etcd-certfile={SSL}/etcd.pem \\
--etcd-keyfile={SSL}/etcd-key.pem \\
--service-cluster-ip-range=172.17.0.0/16 \\
--v=2"
"""


def kubeconfig(ip: str) -> str:
    """Return a root kubeconfig pointing at the node's apiserver."""
    return f"""apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority: {SSL}/ca.pem
    server: https://{ip}:6443
  name: uk8s
contexts:
- context:
    cluster: uk8s
    user: admin
  name: uk8s
current-context: uk8s
users:
- name: admin
  user:
    client-certificate: {SSL}/etcd.pem
    client-key: {SSL}/etcd-key.pem
"""


def ifcfg(device: str, address: str) -> str:
    """Return a CentOS ifcfg file for the load balancer's IP on a loopback alias."""
    return f"DEVICE={device}\nIPADDR={address}\nNETMASK=255.255.255.255\nONBOOT=yes\nNAME={device}\n"


def write_bare(root: Path) -> None:
    """Create a bare machine: empty mount sources (empty, non-executable files) and the state dir."""
    for path, is_dir in MOUNTS.items():
        target = root / path.lstrip("/")
        if is_dir:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
            target.chmod(0o644)
    state = root / ".state"
    state.mkdir(exist_ok=True)
    wrapper = state / "systemctl"
    wrapper.write_text(f'#!/bin/sh\nFLEET_STATE={state} exec /usr/bin/python3 {SYSTEMCTL} "$@"\n')
    wrapper.chmod(0o755)


def _write(root: Path, path: str, text: str, mode: int = 0o644) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(mode)


def _copy(source: Path, root: Path, path: str, mode: int = 0o644) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    target.chmod(mode)


def write_master(root: Path, name: str, ip: str, cluster: dict[str, str], pki, binaries: EtcdBinaries) -> None:
    """Create a full UK8S master: etcd binaries, config, certificates, units, kube files."""
    write_bare(root)
    _copy(binaries.etcd, root, "/usr/bin/etcd", 0o755)
    _copy(binaries.etcdctl, root, "/usr/bin/etcdctl", 0o755)
    if binaries.etcdutl:
        _copy(binaries.etcdutl, root, "/usr/bin/etcdutl", 0o755)
    for source, path in ((pki.ca, "ca.pem"), (pki.cert, "etcd.pem"), (pki.key, "etcd-key.pem")):
        _copy(source, root, f"{SSL}/{path}", 0o600 if "key" in path else 0o644)
    (root / "var/lib/etcd").mkdir(exist_ok=True)
    _write(root, "/etc/etcd/etcd.conf", etcd_conf(name, ip, cluster))
    _write(root, "/etc/kubernetes/apiserver", apiserver_conf(ip, cluster))
    _write(
        root,
        "/etc/kubernetes/controller-manager",
        'KUBE_CONTROLLER_MANAGER_OPTS="--master=https://127.0.0.1:6443 --v=2"\n',
    )
    _write(root, "/etc/kubernetes/scheduler", 'KUBE_SCHEDULER_OPTS="--master=https://127.0.0.1:6443 --v=2"\n')
    _write(root, "/usr/lib/systemd/system/etcd.service", ETCD_UNIT)
    for unit, title, config, var in (
        ("kube-apiserver", "API Server", "apiserver", "KUBE_APISERVER_OPTS"),
        ("kube-controller-manager", "Controller Manager", "controller-manager", "KUBE_CONTROLLER_MANAGER_OPTS"),
        ("kube-scheduler", "Scheduler", "scheduler", "KUBE_SCHEDULER_OPTS"),
    ):
        _write(
            root,
            f"/usr/lib/systemd/system/{unit}.service",
            KUBE_UNIT.format(title=title, config=config, name=unit, var=var),
        )
    _write(root, "/etc/sysconfig/network-scripts/ifcfg-lo:internal", ifcfg("lo:internal", "10.23.255.10"))
    _write(root, "/etc/sysconfig/network-scripts/ifcfg-lo:external", ifcfg("lo:external", "106.75.1.10"))
    _write(root, "/root/.kube/config", kubeconfig(ip), 0o600)
    _write(root, "/usr/local/bin/hyperkube", STAND_IN.format(name="hyperkube"), 0o755)
    _write(root, "/usr/local/bin/kubectl", STAND_IN.format(name="kubectl"), 0o755)
