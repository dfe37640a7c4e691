"""What every test server shares: stopping its process group, and `with server:` starting and stopping it."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_group(process: subprocess.Popen | None, sig: int = signal.SIGTERM, grace: float = 15.0) -> None:
    """Signal a server's whole process group, SIGKILL it after `grace` seconds, and reap it."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, sig)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class Served:
    """`with Server(...) as server:` calls start() and, on the way out, stop()."""

    def start(self):  # pragma: no cover - every server defines it
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - every server defines it
        raise NotImplementedError

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
