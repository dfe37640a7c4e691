"""Node: one master node over SSH (run commands, read/write files, relay trees to another node).

Files are written IN PLACE (`cat > path`, `tar --overwrite`), like scp does: on real
masters and on the test fleet several paths are bind mounts or mount points that
cannot be renamed over or unlinked. The price is that a write interrupted half way
leaves a partial file; callers that need atomicity write a new name and `mv` it.
Commands never carry secrets (file contents go through stdin), so commands may be
logged and quoted in errors.

Commands run through fabric (`Connection.run`). Byte streams (file contents on stdin,
a command's raw stdout, node-to-node relays) use the paramiko channel of the same
connection directly: fabric/invoke read an `in_stream` one byte at a time when it is
not a terminal, sleep 10 ms between reads and decode both directions as text, which
corrupts binary data and would take hours for a snapshot.
"""

from __future__ import annotations

import logging
import posixpath
import select
import shlex
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TypeVar

import fabric
import paramiko
from invoke.exceptions import CommandTimedOut

from etcd_backup import ssh
from etcd_backup.cluster import ClusterSpec, MasterNode, NodeLayout, SSHAccess
from etcd_backup.errors import ConfigError, NodeError
from etcd_backup.storage.base import Readable

log = logging.getLogger(__name__)
T = TypeVar("T")

CHUNK = 64 * 1024


@dataclass(frozen=True)
class Result:
    """What a command printed and its exit code."""

    stdout: str
    stderr: str
    code: int


class Node:
    """One master node reached over SSH with a verified host key."""

    def __init__(
        self, member: MasterNode, access: SSHAccess, layout: NodeLayout | None = None, *, connect_timeout: float = 15.0
    ):
        self.member = member
        self.access = access
        self.layout = layout or NodeLayout()
        self.connect_timeout = connect_timeout
        self._conn: fabric.Connection | None = None
        self._lock = threading.Lock()

    @classmethod
    def of(cls, spec: ClusterSpec, node: MasterNode | str) -> Node:
        """The Node for a member (or member name/IP) of the cluster."""
        if spec.ssh is None:
            raise ConfigError(f"cluster {spec.cluster_id} has no SSH access configured", step="ssh")
        member = node if isinstance(node, MasterNode) else spec.node(node)
        return cls(member, spec.ssh, spec.layout)

    @property
    def name(self) -> str:
        """The etcd member name of the node."""
        return self.member.name

    @property
    def ip(self) -> str:
        """The node's IP address."""
        return self.member.ip

    def __str__(self) -> str:
        return f"{self.member.name} ({self.member.ip})"

    def __repr__(self) -> str:
        return f"Node({self})"

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the SSH connection (a later call reconnects)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- commands ---------------------------------------------------------------

    def run(
        self,
        cmd: str,
        *,
        timeout: float = 120.0,
        check: bool = True,
        sudo: bool | None = None,
        env: dict[str, str] | None = None,
        stdin: bytes | Readable | None = None,
    ) -> Result:
        """Run a shell command, wait at most timeout seconds, and raise NodeError on failure when check.

        On timeout the channel is closed; the remote process is not signalled (SSH cannot),
        so wrap long commands in `timeout N ...` on the node when they must die too. A
        connection lost while the command ran raises a transient NodeError.
        """
        if stdin is not None:
            out, err, code = self._exec(cmd, timeout=timeout, sudo=sudo, env=env, stdin=stdin)
            result = Result(out.decode(errors="replace"), err.decode(errors="replace"), code)
        else:
            result = self._fabric_run(cmd, timeout=timeout, sudo=sudo, env=env)
        if check and result.code != 0:
            raise self._failed(cmd, result.code, result.stderr)
        return result

    def _fabric_run(self, cmd: str, *, timeout: float, sudo: bool | None, env: dict[str, str] | None) -> Result:
        """Run cmd with fabric's Connection.run; map timeouts and lost connections to NodeError."""
        conn = self._connection()
        log.debug("%s: %s", self, cmd)
        began = time.monotonic()
        try:
            out = conn.run(self._wrap(cmd, sudo=sudo, env=env), timeout=timeout)
        except CommandTimedOut:
            raise self._error(f"`{_short(cmd)}` timed out after {timeout:.0f} s", step="run") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._lost(cmd, exc) from None
        if out.exited == -1 and time.monotonic() - began >= timeout:  # invoke's timer closed the channel first
            raise self._error(f"`{_short(cmd)}` timed out after {timeout:.0f} s", step="run")
        if out.exited == -1 and not self._alive():  # no exit status: the connection went away
            raise self._lost(cmd)
        return Result(out.stdout, out.stderr, out.exited)

    def _exec(
        self,
        cmd: str,
        *,
        timeout: float,
        sudo: bool | None = None,
        env: dict[str, str] | None = None,
        stdin: bytes | Readable | None = None,
    ) -> tuple[bytes, bytes, int]:
        """Run cmd and return raw stdout, stderr and exit code."""
        err = bytearray()
        out, (code, broken) = _collect(self._output(cmd, timeout, err, sudo=sudo, env=env, stdin=stdin))
        if broken and code == 0:
            raise self._error(f"`{_short(cmd)}` stopped reading its input: {broken}", step="run")
        return out, bytes(err), code

    def _output(
        self,
        cmd: str,
        timeout: float,
        err: bytearray,
        *,
        sudo: bool | None = None,
        env: dict[str, str] | None = None,
        stdin: bytes | Readable | None = None,
    ) -> Generator[bytes, None, tuple[int, str | None]]:
        """Run cmd: yield its stdout as it arrives, collect stderr into err; return (exit code, why stdin stopped)."""
        deadline = time.monotonic() + timeout
        chan = self._open(cmd, sudo=sudo, env=env, deadline=deadline)
        try:
            broken = self._send(chan, stdin, deadline, cmd) if stdin is not None else None
            chan.shutdown_write()
            yield from self._chunks(chan, deadline, err, cmd)
            code = self._status(chan, deadline, cmd)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._lost(cmd, exc) from None
        finally:
            chan.close()
        if code == -1 and not self._alive():
            raise self._lost(cmd)
        return code, broken

    def _alive(self) -> bool:
        """True while the SSH connection is up."""
        conn = self._conn
        return conn is not None and conn.is_connected

    def _lost(self, cmd: str, exc: BaseException | None = None) -> NodeError:
        """The error of a command whose channel broke: transient when the connection itself went away."""
        why = f": {exc.__class__.__name__}: {exc}" if exc is not None else ""
        if self._alive() and not isinstance(exc, EOFError | ConnectionError):  # the transport may not know yet
            return self._error(f"`{_short(cmd)}` failed{why}", step="run")
        self.close()
        return self._error(f"`{_short(cmd)}` lost its SSH connection{why}", step="run", transient=True)

    def _open(self, cmd: str, *, sudo: bool | None, env: dict[str, str] | None, deadline: float) -> paramiko.Channel:
        """Start cmd on a fresh channel."""
        full = self._wrap(cmd, sudo=sudo, env=env)
        log.debug("%s: %s", self, cmd)
        try:
            chan = self._connection().client.get_transport().open_session(timeout=self.connect_timeout)
            chan.settimeout(max(deadline - time.monotonic(), 0.1))
            chan.exec_command(full)
        except (paramiko.SSHException, OSError) as exc:
            self.close()
            raise self._error(f"cannot start `{_short(cmd)}`: {exc}", step="run", transient=True) from None
        return chan

    def _wrap(self, cmd: str, *, sudo: bool | None, env: dict[str, str] | None) -> str:
        """The command line actually sent: env exports, then sudo around a shell."""
        if env:
            cmd = " ".join(f"export {k}={shlex.quote(v)};" for k, v in env.items()) + " " + cmd
        use_sudo = self.access.use_sudo if sudo is None else sudo
        if use_sudo:
            return f"sudo -n sh -c {shlex.quote(cmd)}"
        return f"sh -c {shlex.quote(cmd)}"

    def _send(self, chan: paramiko.Channel, source: bytes | Readable, deadline: float, cmd: str) -> str | None:
        """Write all of source to the command's stdin; returns why it stopped early, if it did."""
        chunks = [source] if isinstance(source, (bytes, bytearray)) else iter(lambda: source.read(CHUNK), b"")
        try:
            for chunk in chunks:
                chan.settimeout(max(deadline - time.monotonic(), 0.1))
                chan.sendall(chunk)
        except TimeoutError:
            raise self._error(f"`{_short(cmd)}` timed out reading its input", step="run") from None
        except OSError as exc:
            return str(exc) or exc.__class__.__name__
        return None

    def _chunks(self, chan: paramiko.Channel, deadline: float, err: bytearray, cmd: str) -> Iterator[bytes]:
        """Yield the command's stdout until end of file, collecting stderr into err."""
        while True:
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(CHUNK)
            if chan.recv_ready():
                yield chan.recv(CHUNK)
                continue
            if chan.eof_received or chan.closed:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._error(f"`{_short(cmd)}` timed out", step="run")
            select.select([chan], [], [], min(left, 1.0))
        while chan.recv_ready():
            yield chan.recv(CHUNK)
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(CHUNK)

    def _status(self, chan: paramiko.Channel, deadline: float, cmd: str) -> int:
        """Wait for the command's exit code."""
        if not chan.status_event.wait(max(deadline - time.monotonic(), 0.1)):
            raise self._error(f"`{_short(cmd)}` timed out waiting for its exit code", step="run")
        return chan.recv_exit_status()

    def _connection(self) -> fabric.Connection:
        """The live fabric connection, connecting when needed (host key verified)."""
        with self._lock:
            if self._conn is None or not self._conn.is_connected:
                self.close()
                self._conn = self._connect()
            return self._conn

    def _connect(self) -> fabric.Connection:
        """Open the SSH connection; errors name the node, never a secret."""
        a = self.access
        secret = ssh.connect_kwargs(
            a.private_key.get_secret_value() if a.private_key else None,
            a.password.get_secret_value() if a.password else None,
            self.connect_timeout,
        )
        timeout = secret.pop("timeout")
        config = fabric.Config(
            lazy=True,  # no fabric or ssh config files: the block says everything
            ssh_config=paramiko.SSHConfig(),
            overrides={"run": {"hide": True, "warn": True, "in_stream": False}},
        )
        conn = fabric.Connection(
            self.ip,
            user=a.user,
            port=self.member.ssh_port,
            config=config,
            connect_timeout=timeout,
            connect_kwargs=secret,
        )
        ssh.verify_host_keys(conn.client, a.known_hosts or None)  # instead of fabric's AutoAddPolicy
        try:
            conn.open()
        except ssh.CONNECT_ERRORS as exc:
            conn.close()
            err = ssh.connect_error(exc, f"{a.user}@{self.ip}:{self.member.ssh_port}", self.ip)
            err.node = str(self)
            raise err from None
        conn.transport.set_keepalive(15)
        return conn

    # -- files ------------------------------------------------------------------

    def exists(self, path: str, *, nonempty: bool = False) -> bool:
        """True when path exists on the node (and, with nonempty, is not an empty file)."""
        test = "-s" if nonempty else "-e"
        return self.run(f"test {test} {shlex.quote(path)}", check=False, timeout=30).code == 0

    def read(self, path: str, *, timeout: float = 120.0) -> bytes:
        """The whole content of a (small) file; a missing file raises NodeError."""
        out, err, code = self._exec(f"cat -- {shlex.quote(path)}", timeout=timeout)
        if code != 0:
            raise self._failed(f"cat {path}", code, err.decode(errors="replace"), step="read")
        return out

    def write(
        self,
        path: str,
        data: bytes | str | Readable,
        mode: int | None = None,
        *,
        make_parents: bool = True,
        timeout: float = 300.0,
    ) -> None:
        """Write data to path in place (truncate + write, keeping the inode), then chmod when mode is given."""
        q = shlex.quote(path)
        cmd = f"cat > {q}"
        if make_parents:
            cmd = f"mkdir -p {shlex.quote(posixpath.dirname(path) or '/')} && {cmd}"
        if mode is not None:
            cmd += f" && chmod {mode:o} {q}"
        payload = data.encode() if isinstance(data, str) else data
        _, err, code = self._exec(cmd, timeout=timeout, stdin=payload)
        if code != 0:
            raise self._failed(f"write {path}", code, err.decode(errors="replace"), step="write")

    def put_file(self, local_path: str, remote_path: str, mode: int | None = None, *, timeout: float = 600.0) -> None:
        """Stream a local file to the node (in place)."""
        with open(local_path, "rb") as f:
            self.write(remote_path, f, mode, timeout=timeout)

    def get_file(self, remote_path: str, local_path: str, *, timeout: float = 600.0) -> int:
        """Stream a file from the node to a local path; returns its size."""
        size = 0
        with open(local_path, "wb") as f:
            for chunk in self.stream(f"cat -- {shlex.quote(remote_path)}", timeout=timeout, step="get"):
                f.write(chunk)
                size += len(chunk)
        return size

    def stream(self, cmd: str, *, timeout: float = 600.0, step: str = "run") -> Iterator[bytes]:
        """Yield a command's stdout as it arrives; raises NodeError after the end when it failed."""
        err = bytearray()
        code, _ = yield from self._output(cmd, timeout, err)
        if code != 0:
            raise self._failed(cmd, code, err.decode(errors="replace"), step=step)

    def copy_file_to(self, other: Node, path: str, dest: str | None = None, *, timeout: float = 600.0) -> None:
        """Relay one file from this node to the same (or dest) path on other, keeping its mode."""
        mode = int(self.run(f"stat -c %a {shlex.quote(path)}", timeout=30).stdout.strip(), 8)
        other.write(dest or path, self._reader(f"cat -- {shlex.quote(path)}", timeout, "copy"), mode, timeout=timeout)

    def copy_tree_to(self, other: Node, path: str, dest: str | None = None, *, timeout: float = 600.0) -> None:
        """Relay a directory from this node to other through this process (tar c | tar x), like `scp -r`.

        The contents of path end up in dest (default: the same path) with owners, modes
        and times kept; existing files are overwritten in place, others are left alone.
        """
        dest = dest or path
        src = f"tar -C {shlex.quote(path)} -cf - ."
        dst = f"mkdir -p {shlex.quote(dest)} && tar -C {shlex.quote(dest)} --overwrite -xpf -"
        _, err, code = other._exec(dst, timeout=timeout, stdin=self._reader(src, timeout, "copy"))
        if code != 0:
            raise other._failed(f"tar x into {dest}", code, err.decode(errors="replace"), step="copy")

    def _reader(self, cmd: str, timeout: float, step: str) -> _StreamReader:
        """A file-like reader over a command's stdout."""
        return _StreamReader(self.stream(cmd, timeout=timeout, step=step))

    # -- errors -----------------------------------------------------------------

    def _error(self, message: str, *, step: str, transient: bool = False) -> NodeError:
        err = NodeError(message, step=step, node=str(self))
        err.transient = transient
        return err

    def _failed(self, cmd: str, code: int, stderr: str, *, step: str = "run") -> NodeError:
        tail = stderr.strip()[-500:]
        return self._error(f"`{_short(cmd)}` exited {code}" + (f": {tail}" if tail else ""), step=step)


class _StreamReader:
    """Adapts an iterator of byte chunks to read(n)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            chunk = next(self._chunks, b"")
            if not chunk:
                break
            self._buf += chunk
        data, self._buf = (self._buf, b"") if n < 0 else (self._buf[:n], self._buf[n:])
        return data


def nodes_of(spec: ClusterSpec) -> list[Node]:
    """A Node for every master of the cluster, in spec order."""
    return [Node.of(spec, n) for n in spec.nodes]


def _collect(output: Generator[bytes, None, T]) -> tuple[bytes, T]:
    """All the chunks a generator yields, and what it returns."""
    chunks = bytearray()
    while True:
        try:
            chunks += next(output)
        except StopIteration as done:
            return bytes(chunks), done.value


def _short(cmd: str) -> str:
    return cmd if len(cmd) <= 200 else cmd[:197] + "..."
