"""First run (the runbook's step 1): read a master's certificates and members into an EtcdCluster block.

    python -m blocks.first_run --host 10.23.17.200 --ssh-key ~/.ssh/id_ed25519 \\
        --known-hosts ~/.ssh/known_hosts --cluster-id uk8s-f1wymalx --name prod

The known_hosts file must hold the host keys of every master (`ssh-keyscan IP1 IP2 IP3`);
its text is stored in the block so later flows verify the same keys.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from blocks.cluster import EtcdCluster
from etcd_backup.cluster import ClusterSpec, NodeLayout, SSHAccess
from etcd_backup.discover import check_nodes, discover
from etcd_backup.errors import ConfigError, EtcdBackupError, NodeError


def first_run(
    host: str,
    *,
    cluster_id: str,
    name: str,
    known_hosts: str,
    private_key: str | None = None,
    password: str | None = None,
    ssh_port: int = 22,
    user: str = "root",
    use_sudo: bool = False,
    layout: NodeLayout | None = None,
    check_all_nodes: bool = True,
    overwrite: bool = False,
) -> EtcdCluster:
    """Discover the cluster through one master, check every master is reachable, and save the block."""
    access = SSHAccess(
        user=user, private_key=private_key, password=password, known_hosts=known_hosts, use_sudo=use_sudo
    )
    spec = discover(host, ssh_port, access=access, cluster_id=cluster_id, layout=layout)
    if check_all_nodes:
        problems = check_nodes(spec)
        if problems:
            lines = "; ".join(f"{node}: {why}" for node, why in problems.items())
            raise NodeError(f"some masters are not usable: {lines}", step="first run")
    block = EtcdCluster.from_spec(spec)
    try:
        block.save(name, overwrite=overwrite)
    except ValueError as exc:
        raise ConfigError(
            f"cannot save block etcd-cluster/{name}: {exc} (use --overwrite to replace it)", step="first run"
        ) from None
    return block


def summary(name: str, spec: ClusterSpec) -> str:
    """A secret-free description of what was saved."""
    nodes = ", ".join(f"{n.name} ({n.ip})" for n in spec.nodes)
    endpoints = ", ".join(spec.endpoints)
    return f"saved etcd-cluster/{name}: {spec.cluster_id}, {len(spec.nodes)} masters: {nodes}; endpoints {endpoints}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m blocks.first_run", description=__doc__.splitlines()[0])
    p.add_argument("--host", required=True, help="IP of any master node")
    p.add_argument("--ssh-port", type=int, default=22)
    p.add_argument("--ssh-user", default="root")
    p.add_argument("--ssh-key", help="private key file")
    p.add_argument("--ssh-password-env", metavar="VAR", help="read the SSH password from this environment variable")
    p.add_argument("--ask-password", action="store_true", help="prompt for the SSH password")
    p.add_argument("--known-hosts", default=str(Path.home() / ".ssh/known_hosts"), help="known_hosts file")
    p.add_argument("--cluster-id", required=True, help="e.g. uk8s-f1wymalx")
    p.add_argument("--name", required=True, help="name of the EtcdCluster block to save")
    p.add_argument("--use-sudo", action="store_true", help="run node commands with sudo -n")
    p.add_argument("--layout", action="append", default=[], metavar="FIELD=VALUE", help="override a node path/port")
    p.add_argument("--skip-node-check", action="store_true", help="do not log in to the other masters")
    p.add_argument("--overwrite", action="store_true", help="replace an existing block of that name")
    return p


def _layout(pairs: list[str]) -> NodeLayout:
    """NodeLayout with FIELD=VALUE overrides."""
    fields = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
    unknown = set(fields) - set(NodeLayout.model_fields)
    if unknown or len(fields) != len(pairs):
        raise ConfigError(f"bad --layout {sorted(unknown) or pairs}; fields: {', '.join(NodeLayout.model_fields)}")
    return NodeLayout(**fields)


def _read(path: str, what: str) -> str:
    try:
        return Path(path).expanduser().read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}", step="first run") from None


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        password = os.environ.get(args.ssh_password_env) if args.ssh_password_env else None
        if args.ask_password:
            password = getpass.getpass(f"SSH password for {args.ssh_user}@{args.host}: ")
        key = _read(args.ssh_key, "SSH key") if args.ssh_key else None
        if not key and not password:
            raise ConfigError("give --ssh-key or a password (--ssh-password-env / --ask-password)", step="first run")
        block = first_run(
            args.host,
            cluster_id=args.cluster_id,
            name=args.name,
            known_hosts=_read(args.known_hosts, "known_hosts"),
            private_key=key,
            password=password,
            ssh_port=args.ssh_port,
            user=args.ssh_user,
            use_sudo=args.use_sudo,
            layout=_layout(args.layout),
            check_all_nodes=not args.skip_node_check,
            overwrite=args.overwrite,
        )
    except EtcdBackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary(args.name, block.spec()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
