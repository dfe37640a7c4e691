"""The EtcdCluster block: one etcd cluster's endpoints, TLS material, master nodes, SSH access and layout."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from etcd_backup.cluster import ClusterSpec, MasterNode, NodeLayout, SSHAccess
from etcd_backup.etcd import EtcdAccess

SHARED_FIELDS = ("cluster_id", "endpoints", "ca_pem", "cert_pem", "key_pem", "nodes", "layout")
LOGIN = {  # block field -> SSHAccess field
    "ssh_user": "user",
    "ssh_private_key": "private_key",
    "ssh_password": "password",
    "known_hosts": "known_hosts",
    "use_sudo": "use_sudo",
}
LOGO = "https://raw.githubusercontent.com/etcd-io/etcd/main/logos/etcd-glyph-color.png"


class EtcdCluster(Block):
    """An etcd cluster of Kubernetes masters: how to reach etcd (TLS) and the nodes (SSH)."""

    _block_type_name = "etcd Cluster"
    _block_type_slug = "etcd-cluster"
    _description = (
        "One etcd cluster (e.g. a UK8S control plane): client endpoints, the CA, etcd.pem and "
        "etcd-key.pem, the master nodes with their etcd member names, SSH access to them and "
        "where files live on them. Fill it with `python -m blocks.first_run`."
    )
    _logo_url = LOGO

    cluster_id: str = Field(description="cluster id used in backup names, e.g. uk8s-f1wymalx")
    endpoints: list[str] = Field(default_factory=list, description="client URLs; empty = https://<node ip>:2379")
    ca_pem: str = Field(description="CA certificate (PEM), /etc/kubernetes/ssl/ca.pem")
    cert_pem: str = Field(description="client certificate (PEM), /etc/kubernetes/ssl/etcd.pem")
    key_pem: SecretStr = Field(description="client key (PEM), /etc/kubernetes/ssl/etcd-key.pem")
    nodes: list[MasterNode] = Field(default_factory=list, description="master nodes: etcd name, IP, SSH port")
    ssh_user: str = Field(default="root", description="SSH login user on the masters")
    ssh_private_key: SecretStr | None = Field(default=None, description="OpenSSH private key text")
    ssh_password: SecretStr | None = Field(default=None, description="SSH password (or use a key)")
    known_hosts: str = Field(default="", description="known_hosts lines of every master (ssh-keyscan)")
    use_sudo: bool = Field(default=False, description="run node commands through `sudo -n` (non-root user)")
    layout: NodeLayout = Field(default_factory=NodeLayout, description="paths and ports on the masters")

    def spec(self) -> ClusterSpec:
        """The core description of the cluster."""
        ssh = None
        if self.ssh_private_key is not None or self.ssh_password is not None:
            ssh = SSHAccess(**{field: getattr(self, mine) for mine, field in LOGIN.items()})
        return ClusterSpec(ssh=ssh, **{name: getattr(self, name) for name in SHARED_FIELDS})

    def access(self, timeout: float = 10.0, *, with_nodes: bool = False) -> EtcdAccess:
        """An EtcdAccess for the cluster's client endpoints (with_nodes: also every master's client URL)."""
        spec = self.spec()
        endpoints = list(spec.endpoints)
        if with_nodes:
            endpoints = list(dict.fromkeys(endpoints + [spec.client_url(n) for n in spec.nodes]))
        return EtcdAccess(
            endpoints=tuple(endpoints),
            ca=spec.ca_pem,
            cert=spec.cert_pem,
            key=spec.key_pem.get_secret_value(),
            timeout=timeout,
        )

    @classmethod
    def from_spec(cls, spec: ClusterSpec) -> EtcdCluster:
        """A block holding everything in spec."""
        login = {mine: getattr(spec.ssh, field) for mine, field in LOGIN.items()} if spec.ssh else {}
        return cls(**login, **{name: getattr(spec, name) for name in SHARED_FIELDS})


def load_cluster(name: str) -> EtcdCluster:
    """Load the EtcdCluster block `name`; ConfigError when it does not exist or the API does not answer."""
    from blocks.loading import load_block

    return load_block(name, EtcdCluster, "cluster block")  # type: ignore[return-value]
