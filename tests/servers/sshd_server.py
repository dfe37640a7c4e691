"""A real backup SSH server for tests and benchmarks: OpenSSH's sshd on a free loopback port.

It runs as root (sshd needs it to switch users) with its own host key, and serves one
system account, `etcdbackup`, that logs in with an ed25519 key or with a password.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.servers.process import Served, stop_group
from tests.servers.seaweedfs import free_port

SSHD = "/usr/sbin/sshd"
USER = "etcdbackup"
PASSWORD = "etcdbackup-test-password"  # fixed so that parallel test sessions agree on it

CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/ssh_host_ed25519_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication yes
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin no
AllowUsers {user}
Subsystem sftp internal-sftp
MaxStartups 100
MaxSessions 100
LogLevel ERROR
"""


def ensure_user(name: str = USER, password: str = PASSWORD) -> pwd.struct_passwd:
    """Create the system account if missing (useradd) and set its password (chpasswd)."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/bin/sh", name],
            capture_output=True,
        )
    entry = pwd.getpwnam(name)  # raises if useradd failed for another reason than a race
    subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True, capture_output=True)
    return entry


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)


class BackupSSHD(Served):
    """sshd on 127.0.0.1:<free port>; `directory` is writable by the user, `readonly_directory` is not."""

    def __init__(self, base: str | None = None):
        if os.geteuid() != 0:
            raise RuntimeError("the backup sshd needs root (to run sshd and create its user)")
        self.base = Path(base or tempfile.mkdtemp(prefix="etcd-backup-sshd-"))
        self.base.chmod(0o755)
        self.port = free_port()
        self.host = "127.0.0.1"
        self.user = USER
        self.password = PASSWORD
        self.directory = str(self.base / "backups")
        self.readonly_directory = str(self.base / "readonly")
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> BackupSSHD:
        """Create user, keys and directories, start sshd and wait for its banner."""
        account = ensure_user()
        _keygen(self.base / "ssh_host_ed25519_key", "backup-sshd-host")
        _keygen(self.base / "client_key", "backup-client")
        shutil.copy(self.base / "client_key.pub", self.base / "authorized_keys")
        (self.base / "authorized_keys").chmod(0o644)
        os.makedirs(self.directory, mode=0o700)
        os.chown(self.directory, account.pw_uid, account.pw_gid)
        os.makedirs(self.readonly_directory, mode=0o755)
        (self.base / "sshd_config").write_text(CONFIG.format(port=self.port, dir=self.base, user=self.user))
        os.makedirs("/run/sshd", exist_ok=True)
        self.log = open(self.base / "sshd.log", "wb")
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.base / "sshd_config")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        began = time.monotonic()
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() - began > timeout:
                self.stop()
                raise RuntimeError(f"sshd did not start on port {self.port}; see {self.log.name}")
            time.sleep(0.05)
        return self

    @property
    def private_key(self) -> str:
        """The client's OpenSSH private key text (authorized for the user)."""
        return (self.base / "client_key").read_text()

    @property
    def key_path(self) -> str:
        """Path of the client's private key file (for ssh/scp)."""
        return str(self.base / "client_key")

    def host_key_line(self) -> tuple[str, str]:
        """The host key as (type, base64 blob)."""
        kind, blob = (self.base / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        return kind, blob

    def known_hosts(self, port: int | None = None) -> str:
        """known_hosts text for this server (or for a proxy in front of it on another port)."""
        kind, blob = self.host_key_line()
        return f"[{self.host}]:{port or self.port} {kind} {blob}\n"

    @property
    def fingerprint(self) -> str:
        """The host key's 'SHA256:...' fingerprint."""
        digest = hashlib.sha256(base64.b64decode(self.host_key_line()[1])).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    def stop(self) -> None:
        """Stop sshd (and the sessions it forked)."""
        stop_group(self.process, grace=10)
        if getattr(self, "log", None):
            self.log.close()

    def cleanup(self) -> None:
        """Stop and remove the server's directory."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> BackupSSHD:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def _ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                return sock.recv(8).startswith(b"SSH-")
        except OSError:
            return False
