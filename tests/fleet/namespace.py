"""Run an sshd in its own mount namespace with a node's dirs bind-mounted over the system paths."""

import contextlib
import os
import shlex
import socket
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from . import procs
from .layout import MOUNTS

SSHD_CONFIG = """ListenAddress {ip}:22
HostKey {state}/ssh_host_ed25519_key
PidFile {state}/sshd.pid
AuthorizedKeysFile {state}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 100:30:200
MaxSessions 100
Subsystem sftp internal-sftp
"""


def ssh_keypair() -> tuple[str, str]:
    """Return a new ed25519 key as (OpenSSH private key text, public key line)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public.decode()


def prepare_host() -> None:
    """Create the (empty) mount points on the host; bind mounts need an existing target."""
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    for path, is_dir in list(MOUNTS.items()) + [("/usr/bin/systemctl", False)]:
        target = Path(path)
        if is_dir:
            target.mkdir(parents=True, exist_ok=True)
        elif not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(mode=0o644)


def write_sshd_files(state: Path, ip: str, authorized_key: str) -> str:
    """Write sshd_config, a fresh host key and authorized_keys into `state`; return the host public key."""
    private, public = ssh_keypair()
    key = state / "ssh_host_ed25519_key"
    key.write_text(private)
    key.chmod(0o600)
    (state / "ssh_host_ed25519_key.pub").write_text(public + "\n")
    (state / "authorized_keys").write_text(authorized_key + "\n")
    (state / "sshd_config").write_text(SSHD_CONFIG.format(ip=ip, state=state))
    return public


def start_sshd(root: Path, ip: str, timeout: float = 60) -> tuple[int, str]:
    """Start the node's sshd in a new mount namespace; return (pid, mount namespace id)."""
    state = root / ".state"
    mounts = [(root / path.lstrip("/"), path) for path in MOUNTS] + [(state / "systemctl", "/usr/bin/systemctl")]
    script = " && ".join(f"mount --bind {shlex.quote(str(src))} {shlex.quote(dst)}" for src, dst in mounts)
    script += f" && exec /usr/sbin/sshd -D -f {state}/sshd_config -E {state}/sshd.log"
    proc = procs.spawn(["unshare", "-m", "--propagation", "private", "sh", "-c", script], state / "sshd.out")
    deadline = time.monotonic() + timeout
    while not _listening(ip):
        if proc.poll() is not None or time.monotonic() > deadline:
            how = f"exited with {proc.returncode}" if proc.poll() is not None else f"not listening after {timeout} s"
            procs.kill(proc.pid, timeout=0)
            raise RuntimeError(
                f"sshd for node {ip} did not start ({how}):\n{procs.log_tail(state / 'sshd.out')}\n"
                f"{procs.log_tail(state / 'sshd.log')}"
            )
        time.sleep(0.02)
    return proc.pid, os.readlink(f"/proc/{proc.pid}/ns/mnt")


def _listening(ip: str) -> bool:
    try:
        socket.create_connection((ip, 22), timeout=0.5).close()
        return True
    except OSError:
        return False


def members(namespace: str) -> list[int]:
    """Return the pids of every process in mount namespace `namespace`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/mnt") == namespace:
                    found.append(int(entry))
            except OSError:
                pass
    return found


def kill_namespace(namespace: str) -> None:
    """SIGKILL every process of the node's mount namespace (sshd, sessions, etcd); never the host's."""
    if namespace == os.readlink("/proc/self/ns/mnt"):
        raise RuntimeError(f"refusing to kill the host's mount namespace {namespace}")
    with _held(namespace) as held:
        if not held:
            return  # already gone: its number may belong to another node's namespace by now
        for _ in range(5):
            targets = [pid for pid in members(namespace) if procs.alive(pid)]
            if not targets:
                return
            procs.kill_all(targets, timeout=0)


@contextlib.contextmanager
def _held(namespace: str):
    """Hold the namespace open while killing it, so its number cannot be reused by a new node meanwhile."""
    for pid in members(namespace):
        try:
            fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
        except OSError:
            continue
        if f"mnt:[{os.fstat(fd).st_ino}]" == namespace:
            try:
                yield True
            finally:
                os.close(fd)
            return
        os.close(fd)
    yield False
