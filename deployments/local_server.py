"""Start and stop a local Prefect server (UI and API on 127.0.0.1) for the demo and the tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from etcd_backup.errors import ConfigError


class LocalPrefectServer:
    """`prefect server start` in a child process with its own PREFECT_HOME (SQLite database)."""

    def __init__(self, home: Path, port: int = 4200, scheduler_seconds: int = 10):
        self.home = Path(home)
        self.port = port
        self.scheduler_seconds = scheduler_seconds
        self.proc: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        """The API URL clients set as PREFECT_API_URL."""
        return f"http://127.0.0.1:{self.port}/api"

    def env(self) -> dict:
        """Environment for processes that talk to this server."""
        return {
            **os.environ,
            "PREFECT_API_URL": self.api_url,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }

    def start(self, timeout: float = 120) -> LocalPrefectServer:
        """Start the server and wait until /api/health answers."""
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**self.env(), "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": str(self.scheduler_seconds)}
        env.pop("PREFECT_API_URL")
        log = open(self.home / "server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConfigError(
                    f"Prefect server exited ({self.proc.returncode}); see {self.home / 'server.log'}",
                    step="prefect server",
                )
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise ConfigError(
            f"Prefect server did not answer within {timeout:.0f} s; see {self.home / 'server.log'}",
            step="prefect server",
        )

    def stop(self) -> None:
        """Stop the server and its children."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
