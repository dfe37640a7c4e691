"""What the terminal shows of a failed run: one readable line at info level, the traceback once at debug level."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.operator, pytest.mark.slow]

SCRIPT = """
from flows.backup import list_backups
state = list_backups(cluster="terminal", storage="local-directory-storage/terminal", return_state=True)
print("STATE:", state.message)
"""


def test_a_failed_run_shows_one_line_and_the_traceback_only_at_debug(local_prefect_server, tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from blocks import EtcdCluster, LocalStorage

    not_a_dir = tmp_path / "backups"
    not_a_dir.write_text("a file")
    with temporary_settings({PREFECT_API_URL: local_prefect_server.api_url}):
        EtcdCluster(cluster_id="uk8s-terminal", ca_pem="ca", cert_pem="cert", key_pem="key").save("terminal")
        LocalStorage(directory=str(not_a_dir)).save("terminal")
    shown = {}
    for level in ("INFO", "DEBUG"):
        run = subprocess.run(
            [sys.executable, "-c", SCRIPT],
            env={**local_prefect_server.env(), "PREFECT_LOGGING_LEVEL": level},
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert "STATE: etcd-list-backups failed: [local list] local storage file://" in run.stdout, run.stderr
        shown[level] = run.stderr
    assert "Traceback" not in shown["INFO"], shown["INFO"]
    assert "ERROR   | Flow run" in shown["INFO"] and "etcd-list-backups failed: [local list]" in shown["INFO"]
    assert shown["DEBUG"].count("traceback of the failure below") == 1, shown["DEBUG"]
    assert shown["DEBUG"].count("Traceback (most recent call last)") == 1, shown["DEBUG"]
