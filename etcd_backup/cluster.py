"""What the tool knows about one etcd cluster: its members, certificates, node layout and SSH access."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr, model_validator

from etcd_backup.errors import ConfigError


class MasterNode(BaseModel):
    """One master node: its etcd member name (ETCD_NAME), IP address and SSH port."""

    name: str = Field(description="etcd member name, e.g. etcd1")
    ip: str = Field(description="the node's IP address (etcd listens and SSH connects here)")
    ssh_port: int = Field(default=22, description="SSH port of the node")


class NodeLayout(BaseModel):
    """Where things live on a master node; the defaults are UK8S's layout from the runbook."""

    etcd_conf: str = "/etc/etcd/etcd.conf"
    etcd_conf_dir: str = "/etc/etcd"
    data_dir: str = "/var/lib/etcd/default.etcd"
    ca: str = "/etc/kubernetes/ssl/ca.pem"
    cert: str = "/etc/kubernetes/ssl/etcd.pem"
    key: str = "/etc/kubernetes/ssl/etcd-key.pem"
    kubernetes_dir: str = "/etc/kubernetes"
    unit: str = "/usr/lib/systemd/system/etcd.service"
    unit_dir: str = "/usr/lib/systemd/system"
    etcd_bin: str = "/usr/bin/etcd"
    etcdctl_bin: str = "/usr/bin/etcdctl"
    etcdutl_bin: str = "/usr/bin/etcdutl"
    hyperkube: str = "/usr/local/bin/hyperkube"
    kubectl: str = "/usr/local/bin/kubectl"
    kubeconfig_dir: str = "/root/.kube"
    apiserver_conf: str = "/etc/kubernetes/apiserver"
    network_scripts: str = "/etc/sysconfig/network-scripts"
    client_port: int = 2379
    peer_port: int = 2380

    def etcdctl_env(self, endpoints: list[str]) -> dict[str, str]:
        """The runbook's ETCDCTL_* environment for running etcdctl on a node."""
        return {
            "ETCDCTL_API": "3",
            "ETCDCTL_CACERT": self.ca,
            "ETCDCTL_CERT": self.cert,
            "ETCDCTL_KEY": self.key,
            "ETCDCTL_ENDPOINTS": ",".join(endpoints),
        }


class SSHAccess(BaseModel):
    """How to log in to the master nodes; host keys are always verified against known_hosts."""

    user: str = "root"
    private_key: SecretStr | None = None
    password: SecretStr | None = None
    known_hosts: str = ""
    use_sudo: bool = False

    @model_validator(mode="after")
    def _needs_a_credential(self) -> SSHAccess:
        if self.private_key is None and self.password is None:
            raise ValueError("SSH access needs a private key or a password")
        return self


class ClusterSpec(BaseModel):
    """One etcd cluster: identity, endpoints, TLS material, master nodes, SSH access and layout."""

    cluster_id: str = Field(description="cluster name used in backup names, e.g. uk8s-f1wymalx")
    endpoints: list[str] = Field(default_factory=list, description="client URLs; derived from nodes when empty")
    ca_pem: str
    cert_pem: str
    key_pem: SecretStr
    nodes: list[MasterNode] = Field(default_factory=list)
    ssh: SSHAccess | None = None
    layout: NodeLayout = Field(default_factory=NodeLayout)

    @model_validator(mode="after")
    def _check(self) -> ClusterSpec:
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"node names must be unique, got {names}")
        if not self.endpoints:
            self.endpoints = [self.client_url(n) for n in self.nodes]
        if not self.endpoints:
            raise ValueError("a cluster needs endpoints or nodes")
        return self

    def peer_url(self, node: MasterNode) -> str:
        """The node's etcd peer URL, e.g. https://10.23.17.200:2380."""
        return f"https://{_host(node.ip)}:{self.layout.peer_port}"

    def client_url(self, node: MasterNode) -> str:
        """The node's etcd client URL, e.g. https://10.23.17.200:2379."""
        return f"https://{_host(node.ip)}:{self.layout.client_port}"

    def initial_cluster(self) -> str:
        """The --initial-cluster value: etcd1=https://ip:2380,etcd2=...."""
        return ",".join(f"{n.name}={self.peer_url(n)}" for n in self.nodes)

    def node(self, name_or_ip: str) -> MasterNode:
        """The master node with this member name or IP."""
        for n in self.nodes:
            if name_or_ip in (n.name, n.ip):
                return n
        raise ConfigError(f"no node named {name_or_ip!r} in cluster {self.cluster_id}", step="config")


def _host(ip: str) -> str:
    """An IP as it appears in a URL (IPv6 in brackets)."""
    return f"[{ip}]" if ":" in ip and not ip.startswith("[") else ip
