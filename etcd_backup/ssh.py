"""SSH connections with verified host keys (known_hosts text or a pinned fingerprint)."""

from __future__ import annotations

import base64
import hashlib
import io

import paramiko

from etcd_backup.errors import NodeError


def fingerprint(key: paramiko.PKey) -> str:
    """The OpenSSH-style SHA256 fingerprint of a host key ('SHA256:...')."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def load_private_key(text: str, passphrase: str | None = None) -> paramiko.PKey:
    """Parse an OpenSSH/PEM private key of any supported type."""
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(text), password=passphrase)
        except (paramiko.SSHException, ValueError):
            continue
    raise NodeError("the private key could not be parsed (unsupported type or wrong passphrase)", step="ssh")


class _PinnedPolicy(paramiko.MissingHostKeyPolicy):
    """Accept a host key only when its fingerprint matches the pinned one."""

    def __init__(self, pinned: str | None):
        self.pinned = pinned

    def missing_host_key(self, client, hostname, key):
        seen = fingerprint(key)
        if self.pinned and seen == self.pinned:
            return
        raise NodeError(
            f"host key {seen} of {hostname} is not in known_hosts"
            + (f" and does not match the pinned {self.pinned}" if self.pinned else "")
            + "; add it to the block's known hosts",
            step="ssh",
            node=hostname,
        )


def verify_host_keys(client: paramiko.SSHClient, known_hosts: str | None, host_fingerprint: str | None = None) -> None:
    """Make the client accept only the host keys in known_hosts (or the pinned fingerprint); refuse any other."""
    if known_hosts:
        _load_known_hosts(client, known_hosts)
    client.set_missing_host_key_policy(_PinnedPolicy(host_fingerprint))


def _gcm_first(sock, **kwargs) -> paramiko.Transport:
    """A Transport that prefers AES-GCM: one AEAD pass per packet moves twice the bytes of aes-ctr + hmac here."""
    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    gcm = tuple(c for c in options.ciphers if c.endswith("-gcm@openssh.com"))
    options.ciphers = gcm + tuple(c for c in options.ciphers if c not in gcm)
    return transport


def connect_kwargs(private_key: str | None, password: str | None, timeout: float) -> dict:
    """Keyword arguments of SSHClient.connect: only the given credential, no agent or key files, bounded waits."""
    return {
        "transport_factory": _gcm_first,
        "pkey": load_private_key(private_key) if private_key else None,
        "password": password,
        "timeout": timeout,
        "banner_timeout": timeout,
        "auth_timeout": timeout,
        "allow_agent": False,
        "look_for_keys": False,
    }


def connect_error(exc: BaseException, where: str, host: str) -> NodeError:
    """The NodeError for a failed connection attempt (never carrying a secret); reachability errors are transient."""
    if isinstance(exc, NodeError):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):
        return NodeError(
            f"host key of {where} changed: {fingerprint(exc.key)} is not the known key", step="ssh", node=host
        )
    if isinstance(exc, paramiko.AuthenticationException):
        return NodeError(f"authentication failed for {where}", step="ssh", node=host)
    err = NodeError(f"cannot reach {where}: {exc.__class__.__name__}: {exc}", step="ssh", node=host)
    err.transient = True
    return err


CONNECT_ERRORS = (NodeError, TimeoutError, OSError, EOFError, paramiko.SSHException)


def connect(
    host: str,
    port: int = 22,
    user: str = "root",
    *,
    private_key: str | None = None,
    password: str | None = None,
    known_hosts: str | None = None,
    host_fingerprint: str | None = None,
    timeout: float = 15.0,
) -> paramiko.SSHClient:
    """Open an SSH session whose host key is verified; errors never carry secrets."""
    client = paramiko.SSHClient()
    verify_host_keys(client, known_hosts, host_fingerprint)
    kwargs = connect_kwargs(private_key, password, timeout)
    try:
        client.connect(host, port=port, username=user, **kwargs)
    except CONNECT_ERRORS as exc:
        client.close()
        raise connect_error(exc, f"{user}@{host}:{port}", host) from None
    transport = client.get_transport()
    if transport is not None:
        transport.set_keepalive(15)
    return client


def _load_known_hosts(client: paramiko.SSHClient, text: str) -> None:
    """Load known_hosts lines (hashed or plain, with [host]:port) into the client."""
    keys = client.get_host_keys()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
        if entry is None:
            continue
        for name in entry.hostnames:
            keys.add(name, entry.key.get_name(), entry.key)
