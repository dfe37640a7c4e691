"""Start and stop a local Prefect server (UI and API on 127.0.0.1) for the demo and the tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from etcd_backup.errors import ConfigError

DATABASE_FILES = ("prefect.db", "prefect.db-wal", "prefect.db-shm", "prefect.db-journal")


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something already listens on host:port."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is not busy
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


class LocalPrefectServer:
    """`prefect server start` in a child process with its own PREFECT_HOME (0700) and SQLite database (0600).

    With `auth_string` ('user:password') the API asks for basic auth; with `encryption_key` (a Fernet key)
    block secrets are encrypted with a key kept outside the database.
    """

    def __init__(
        self,
        home: Path,
        port: int = 4200,
        scheduler_seconds: int = 10,
        *,
        auth_string: str | None = None,
        encryption_key: str | None = None,
    ):
        self.home = Path(home)
        self.port = port
        self.scheduler_seconds = scheduler_seconds
        self.auth_string = auth_string
        self.encryption_key = encryption_key
        self.proc: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        """The API URL clients set as PREFECT_API_URL."""
        return f"http://127.0.0.1:{self.port}/api"

    def env(self) -> dict:
        """Environment for processes that talk to this server."""
        auth = {"PREFECT_API_AUTH_STRING": self.auth_string} if self.auth_string else {}
        return {
            **os.environ,
            "PREFECT_API_URL": self.api_url,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            **auth,
        }

    def _server_env(self) -> dict:
        env = {**self.env(), "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": str(self.scheduler_seconds)}
        env.pop("PREFECT_API_URL")
        env.pop("PREFECT_API_AUTH_STRING", None)
        env["PREFECT_SERVER_API_HOST"] = "127.0.0.1"
        if self.auth_string:
            env["PREFECT_SERVER_API_AUTH_STRING"] = self.auth_string
        if self.encryption_key:
            env["PREFECT_SERVER_ENCRYPTION_KEY"] = self.encryption_key
        return env

    def start(self, timeout: float = 120) -> LocalPrefectServer:
        """Start the server and wait until /api/health answers; a busy port fails at once."""
        if port_in_use(self.port):
            raise ConfigError(
                f"port {self.port} on 127.0.0.1 is already in use (another Prefect server or demo?); "
                "stop it or choose another port",
                step="prefect server",
            )
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.home.chmod(0o700)
        with open(self.home / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                env=self._server_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                umask=0o077,
            )
        self._wait_healthy(timeout)
        self.secure_files()
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConfigError(
                    f"Prefect server exited ({self.proc.returncode}):\n{self.log_tail()}", step="prefect server"
                )
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise ConfigError(
            f"Prefect server did not answer within {timeout:.0f} s:\n{self.log_tail()}", step="prefect server"
        )

    def secure_files(self) -> None:
        """The database files readable by their owner only (they hold every run, and every block's secrets)."""
        for name in DATABASE_FILES:
            path = self.home / name
            if path.exists():
                path.chmod(0o600)

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the server's log."""
        try:
            text = (self.home / "server.log").read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:]) + f"\n(full log: {self.home / 'server.log'})"

    def stop(self) -> None:
        """Stop the server and its children."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
