"""A Prefect server on PostgreSQL plus N process workers on one work pool, as several machines would run it.

Every worker has its own PREFECT_HOME (its own "machine") and runs in the checkout with PYTHONPATH set to it,
so deployments whose entrypoint is a module path (`tests.scale_flows.spike_backup`) import the code already
installed there. The server asks for basic auth and keeps block secrets under its own Fernet key.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
from cryptography.fernet import Fernet

from tests.servers.process import Served, stop_group
from tests.servers.seaweedfs import free_port

CHECKOUT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

# Server settings that make the failure paths observable within a test's patience; see the spike report.
SERVER_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_LOGGING_LEVEL": "INFO",  # uvicorn's access log: one line per API request
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "10",
    # A minute-by-minute cron would otherwise get an hour (60 runs) scheduled ahead per deployment.
    "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME": "PT5M",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS": "2",
    "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "5",
    "PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS": "5",
    "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "5",
    # Leases in files under the server's PREFECT_HOME survive a server restart; the default (memory) does not.
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
}
WORKER_ENV = {
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",  # the minimum; the zombie automation waits for 3 missed beats
    "PREFECT_WORKER_QUERY_SECONDS": "2",
    "PREFECT_WORKER_PREFETCH_SECONDS": "5",
}
ZOMBIE_AFTER_SECONDS = 90


class PrefectCluster(Served):
    """`prefect server start` on a PostgreSQL database and `prefect worker start --pool` processes."""

    def __init__(
        self,
        workdir: Path,
        database_url: str,
        pool: str = "etcd-backup",
        server_env: dict[str, str] | None = None,
        worker_env: dict[str, str] | None = None,
    ):
        self.workdir = Path(workdir)
        self.database_url = database_url
        self.pool = pool
        self.port = free_port()
        self.auth_string = f"admin:{secrets.token_hex(12)}"
        self.encryption_key = Fernet.generate_key().decode()
        self.server_env = {**SERVER_ENV, **(server_env or {})}
        self.worker_env = {**WORKER_ENV, **(worker_env or {})}
        self.server: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}
        self.worker_limits: dict[str, int | None] = {}
        self.server_start_seconds = 0.0

    @property
    def api_url(self) -> str:
        """The API URL clients and workers use."""
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def server_log(self) -> Path:
        """The server's stdout and stderr (with one access-log line per request)."""
        return self.workdir / "server" / "server.log"

    def client_env(self, home: Path | None = None) -> dict[str, str]:
        """Environment for a process that talks to this server (a worker, the CLI)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_API_URL=self.api_url,
            PREFECT_API_AUTH_STRING=self.auth_string,
            PREFECT_HOME=str(home or self.workdir / "client"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
        )
        return env

    def start(self, workers: int = 2, limit: int | None = None, timeout: float = 180) -> PrefectCluster:
        """Start the server, the process pool and `workers` workers (each running at most `limit` flow runs)."""
        self.start_server(timeout)
        self.create_pool()
        for i in range(1, workers + 1):
            self.start_worker(f"worker-{i}", limit)
        self.wait_for(lambda: len(self.online_workers()) >= workers, timeout, f"{workers} workers online")
        return self

    def start_server(self, timeout: float = 180) -> None:
        """`prefect server start` on PostgreSQL (migrations run at start) and wait for /api/health."""
        home = self.workdir / "server"
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(self.server_env)
        env.update(
            PREFECT_HOME=str(home),
            PREFECT_SERVER_DATABASE_CONNECTION_URL=self.database_url,
            PREFECT_SERVER_API_AUTH_STRING=self.auth_string,
            PREFECT_SERVER_ENCRYPTION_KEY=self.encryption_key,
        )
        began = time.monotonic()
        cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        self.server = self._spawn(cmd, env, self.server_log)
        self.wait_for(self._healthy, timeout, f"Prefect server healthy (see {self.server_log})", self.server)
        self.server_start_seconds = time.monotonic() - began

    def create_pool(self) -> None:
        """Create the process work pool (as an operator would with the CLI)."""
        self.cli("work-pool", "create", self.pool, "--type", "process", "--overwrite")

    def worker_log(self, name: str) -> Path:
        """A worker's log, with the output of the flow-run processes it started."""
        return self.workdir / name / "worker.log"

    def start_worker(self, name: str, limit: int | None = None) -> subprocess.Popen:
        """Start `prefect worker start --pool` in the checkout with its own PREFECT_HOME, as on its own machine."""
        home = self.workdir / name
        home.mkdir(parents=True, exist_ok=True)
        env = {**self.client_env(home), **self.worker_env, "PYTHONPATH": str(CHECKOUT)}
        cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", self.pool, "--name", name]
        limit = self.worker_limits.setdefault(name, limit)
        cmd += ["--limit", str(limit)] if limit else []
        self.workers[name] = self._spawn(cmd, env, self.worker_log(name))
        return self.workers[name]

    def kill_worker(self, name: str) -> list[int]:
        """SIGKILL a worker and every process under it (its flow runs): the machine is gone."""
        proc = psutil.Process(self.workers[name].pid)
        victims = [proc, *proc.children(recursive=True)]
        for victim in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                victim.kill()
        self.workers[name].wait()
        return [v.pid for v in victims]

    def cli(self, *args: str) -> str:
        """Run one `prefect` CLI command against this server and return its output."""
        done = subprocess.run(
            [sys.executable, "-m", "prefect", "--no-prompt", *args],
            env=self.client_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(args)} failed: {done.stdout[-1500:]} {done.stderr[-1500:]}")
        return done.stdout

    @contextlib.contextmanager
    def settings(self) -> Iterator[None]:
        """Point this process's Prefect client (deploy, run_deployment, get_client) at the cluster."""
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.api_url, PREFECT_API_AUTH_STRING: self.auth_string}):
            yield

    def client(self) -> Any:
        """A SyncPrefectClient for this server (use it as a context manager)."""
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(self.api_url, auth_string=self.auth_string)

    def online_workers(self) -> list[str]:
        """Names of the pool's workers the server sees as online."""
        with self.client() as c:
            return [w.name for w in c.read_workers_for_work_pool(self.pool) if w.status.value == "ONLINE"]

    def flow_runs(self, deployment_ids: list | None = None, limit: int = 200) -> list:
        """The flow runs of the given deployments (all when None), oldest expected start first."""
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
        from prefect.client.schemas.sorting import FlowRunSort

        deployments = DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids)) if deployment_ids else None
        with self.client() as c:
            return c.read_flow_runs(
                deployment_filter=deployments, sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=limit
            )

    def task_runs(self, flow_run_ids: list) -> list:
        """The task runs of the given flow runs."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        with self.client() as c:
            return c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids)), limit=200)

    def active_slots(self, limit_name: str) -> int:
        """Slots in use on a global concurrency limit."""
        with self.client() as c:
            return c.read_global_concurrency_limit_by_name(limit_name).active_slots

    def create_limit(self, name: str, limit: int) -> None:
        """Create (or reset to `limit`, no slot in use) a global concurrency limit."""
        from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
        from prefect.exceptions import ObjectNotFound

        with self.client() as c:
            try:
                c.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                c.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            else:
                c.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=limit, active_slots=0))

    def crash_silent_runs(self, after_seconds: int = ZOMBIE_AFTER_SECONDS) -> None:
        """The automation that marks a flow run Crashed when its heartbeats stop (its process or machine died)."""
        from datetime import timedelta

        from prefect.client.schemas.objects import StateType
        from prefect.events.actions import ChangeFlowRunState
        from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
        from prefect.events.schemas.events import ResourceSpecification

        ends = {f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")}
        automation = AutomationCore(
            name="crash-silent-flow-runs",
            trigger=EventTrigger(
                after={"prefect.flow-run.heartbeat"},
                expect={"prefect.flow-run.heartbeat", *ends},
                match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
                for_each={"prefect.resource.id"},
                posture=Posture.Proactive,
                threshold=1,
                within=timedelta(seconds=after_seconds),
            ),
            actions=[
                ChangeFlowRunState(
                    state=StateType.CRASHED,
                    message=f"No heartbeat for {after_seconds} s: its worker or machine is gone.",
                )
            ],
        )
        with self.client() as c:
            c.create_automation(automation)

    def request_count(self) -> int:
        """API requests the server has answered so far (lines of uvicorn's access log)."""
        return sum(1 for line in self.server_log.open(errors="replace") if "uvicorn.access" in line)

    def wait_for(
        self, check: Callable[[], T], timeout: float, what: str, proc: subprocess.Popen | None = None, every=0.5
    ) -> T:
        """Poll `check` until it returns something truthy; fail naming `what` after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if result := check():
                    return result
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"waiting for {what}: process exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:.0f} s for {what}")
            time.sleep(every)

    def stop(self) -> None:
        """Stop the workers, then the server (SIGTERM, SIGKILL after 20 s), then any flow-run process left over."""
        leftovers: list[psutil.Process] = []
        for proc in [*self.workers.values(), self.server]:
            if proc is None or proc.poll() is not None:
                continue
            with contextlib.suppress(psutil.Error):
                leftovers += psutil.Process(proc.pid).children(recursive=True)
            stop_group(proc, grace=20)
        for child in leftovers:
            with contextlib.suppress(psutil.Error):
                child.kill()

    def _healthy(self) -> bool:
        return httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200

    def _spawn(self, cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
        with open(log, "ab") as out:
            return subprocess.Popen(
                cmd, env=env, cwd=CHECKOUT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
