"""A throwaway PostgreSQL cluster from Debian's `postgresql` package: initdb in a temp dir, own port and socket."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.servers.process import Served, stop_group
from tests.servers.seaweedfs import free_port

# Test-only speed settings: a crash of this throwaway cluster may lose data, which no test needs.
FAST = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "max_connections": "200"}


def postgres_bindir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin that has initdb (Debian's layout)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql; apt-get install postgresql")
    return found[-1].parent


class PostgresServer(Served):
    """One `postgres` process on 127.0.0.1:<free port>, run as the `postgres` user when we are root."""

    def __init__(self, user: str = "prefect", password: str | None = None, port: int | None = None):
        self.bindir = postgres_bindir()
        self.user = user
        self.password = password or secrets.token_hex(12)
        self.port = port or free_port()
        self.os_user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        # Not under pytest's tmp_path: the postgres user must be able to reach it (pytest-of-root is 0700).
        self.directory = Path(tempfile.mkdtemp(prefix="pg-"))
        self.data = self.directory / "data"
        self.socket_dir = self.directory / "sock"
        self.process: subprocess.Popen | None = None
        self.start_seconds = 0.0

    def url(self, database: str, driver: str = "postgresql+asyncpg") -> str:
        """SQLAlchemy URL of one database (asyncpg, as Prefect's server wants)."""
        return f"{driver}://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 60) -> PostgresServer:
        """initdb (password auth over TCP), start postgres and wait until it accepts connections."""
        began = time.monotonic()
        self.socket_dir.mkdir()
        pwfile = self.directory / "pwfile"
        pwfile.write_text(self.password + "\n")
        shutil.chown(self.directory, self.os_user)
        shutil.chown(self.socket_dir, self.os_user)
        shutil.chown(pwfile, self.os_user)
        self._run(
            "initdb", "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync",
            "--auth-host=scram-sha-256", "--auth-local=peer",
        )  # fmt: skip
        pwfile.unlink()
        args = [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.socket_dir)]
        args += ["-c", "listen_addresses=127.0.0.1", *(a for k, v in FAST.items() for a in ("-c", f"{k}={v}"))]
        self.log = open(self.directory / "postgres.log", "ab")
        self.process = subprocess.Popen(
            args, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, **self._as_owner()
        )
        while not self._ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}; see {self.log.name}")
            if time.monotonic() - began > timeout:
                self.stop()
                raise RuntimeError(f"postgres did not accept connections within {timeout}s; see {self.log.name}")
            time.sleep(0.05)
        self.start_seconds = time.monotonic() - began
        return self

    def create_database(self, name: str) -> str:
        """Create a database owned by our user and return its asyncpg URL."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name, password=True)
        return self.url(name)

    def psql(self, database: str, sql: str) -> str:
        """Run one SQL statement with psql and return its unaligned, tuples-only output."""
        return self._run(
            "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", database, "-At", "-c", sql,
            password=True,
        )  # fmt: skip

    def stop(self) -> None:
        """Fast shutdown (SIGINT), SIGKILL after 15 s, then remove the cluster's directory."""
        stop_group(self.process, signal.SIGINT)
        if getattr(self, "log", None):
            self.log.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _as_owner(self) -> dict:
        return {"user": self.os_user, "group": self.os_user} if os.geteuid() == 0 else {}

    def _run(self, tool: str, *args: str, password: bool = False) -> str:
        env = {**os.environ, "PGPASSWORD": self.password} if password else None
        done = subprocess.run(
            [str(self.bindir / tool), *args], capture_output=True, text=True, env=env, cwd="/", **self._as_owner()
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        return done.stdout

    def _ready(self) -> bool:
        ready = subprocess.run([str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)])
        return ready.returncode == 0
