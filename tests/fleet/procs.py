"""Start detached processes and stop them for sure (process group, then SIGKILL)."""

import os
import signal
import subprocess
import time
from pathlib import Path


def spawn(argv: list, log: Path, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """Start `argv` in its own session with stdout and stderr appended to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )


def alive(pid: int) -> bool:
    """Tell whether `pid` runs (a zombie does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _signal(pid: int, sig: int) -> None:
    for target in (lambda: os.killpg(pid, sig), lambda: os.kill(pid, sig)):
        try:
            target()
        except (ProcessLookupError, PermissionError):
            pass


def kill(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM `pid` and its process group, SIGKILL after `timeout`, and reap it if it is our child."""
    kill_all([pid], timeout)


def kill_all(pids: list[int], timeout: float = 10.0) -> None:
    """Like `kill` for several processes at once."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while True:
        running = [pid for pid in pids if _reap(pid) or alive(pid)]
        if not running:
            return
        if time.monotonic() > deadline:
            for pid in running:
                _signal(pid, signal.SIGKILL)
        time.sleep(0.05)


def _reap(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return False


def log_tail(log: Path, lines: int = 30) -> str:
    """Return the last `lines` lines of a log file (or a note that it is missing)."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no log at {log})"
