"""Two `python -m deployments serve` processes against one real Prefect server: no deployment is silently replaced."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.operator, pytest.mark.slow]


def _config(path, body: str):
    path.write_text(body)
    return path


def _serve(config, server, log, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "deployments", "serve", "--config", str(config), *extra],
        env=server.env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _deployment(name: str):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None


def _wait_for(name: str, check, proc, log_path, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _deployment(name)
        if found is not None and check(found):
            return found
        assert proc.poll() is None, log_path.read_text()[-3000:]
        time.sleep(1)
    raise AssertionError(f"{name} not as expected after {timeout} s:\n{log_path.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def test_second_serve_cannot_silently_replace_the_first(local_prefect_server, tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from blocks import EtcdCluster, LocalStorage

    server = local_prefect_server
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        EtcdCluster(cluster_id="uk8s-two", ca_pem="ca", cert_pem="cert", key_pem="key").save("two", overwrite=True)
        for store in ("a", "b"):
            LocalStorage(directory=str(tmp_path / store)).save(f"two-{store}", overwrite=True)
        first = _config(
            tmp_path / "first.toml", '[[backup]]\ncluster = "two"\nstorage = "local-directory-storage/two-a"\n'
        )
        log_a = tmp_path / "serve-a.log"
        serve_a = _serve(first, server, open(log_a, "wb"))
        serves = [serve_a]
        try:
            _wait_for("etcd-backup/two", lambda d: d.parameters["storage"].endswith("two-a"), serve_a, log_a)

            # the same cluster name from another file: refused at once, naming the owner and the change
            second = _config(
                tmp_path / "second.toml",
                '[[backup]]\ncluster = "two"\nstorage = "local-directory-storage/two-b"\ncron = "0 12 * * *"\n',
            )
            refused = subprocess.run(
                [sys.executable, "-m", "deployments", "serve", "--config", str(second)],
                env=server.env(),
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert refused.returncode == 2, refused.stdout + refused.stderr
            err = refused.stderr
            assert "deployment etcd-backup/two already exists, served by `python -m deployments serve`" in err, err
            assert f"(pid {serve_a.pid}) from {first}" in err
            assert "storage 'local-directory-storage/two-a' -> 'local-directory-storage/two-b'" in err
            assert "schedule '0 0 * * *' UTC -> '0 12 * * *' UTC" in err
            assert "--replace" in err and "Traceback" not in err
            assert _deployment("etcd-backup/two").parameters["storage"].endswith("two-a")

            # a second entry for the cluster under its own name is served beside the first
            named = _config(
                tmp_path / "named.toml", second.read_text().replace("[[backup]]\n", '[[backup]]\nname = "two-b"\n')
            )
            log_b = tmp_path / "serve-b.log"
            serves.append(_serve(named, server, open(log_b, "wb")))
            _wait_for("etcd-backup/two-b", lambda d: d.parameters["storage"].endswith("two-b"), serves[-1], log_b)
            assert _deployment("etcd-backup/two").parameters["storage"].endswith("two-a")

            # --replace takes the deployment over, on purpose
            log_c = tmp_path / "serve-c.log"
            serves.append(_serve(second, server, open(log_c, "wb"), "--replace"))
            replaced = _wait_for(
                "etcd-backup/two", lambda d: d.parameters["storage"].endswith("two-b"), serves[-1], log_c
            )
            assert replaced.schedules[0].schedule.cron == "0 12 * * *"
        finally:
            for proc in serves:
                _stop(proc)
