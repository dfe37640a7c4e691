"""Screenshots of the Prefect UI for the README: the run graph of a three-node restore, and of one rolled back.

Run as root from the project root, with Debian's chromium and playwright (`pip install -e ".[screenshots]"`):
    FLEET_NET=60 .venv/bin/python scripts/screenshots.py
It starts a test fleet (three masters, etcd 3.5.1), a local Prefect server, backs the fleet up, makes it lose
quorum and runs etcd-restore-cluster twice: once through, once with `snapshot restore` failing on etcd3 (so
every node is rolled back). Then headless Chromium opens each flow run in the UI and saves
docs/images/restore-graph.png and docs/images/restore-rolled-back.png. Not part of CI.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402
from prefect.settings import PREFECT_API_URL, temporary_settings  # noqa: E402

from blocks import EtcdCluster, LocalStorage  # noqa: E402
from deployments.local_server import LocalPrefectServer  # noqa: E402
from etcd_backup import etcd, pipeline  # noqa: E402
from etcd_backup.storage.local import LocalStorage as LocalStore  # noqa: E402
from flows.restore_cluster import restore_cluster  # noqa: E402
from tests.fleet import fleet_net  # noqa: E402
from tests.fleet.data import fill  # noqa: E402
from tests.fleet.inject import fail_subcommand  # noqa: E402
from tests.fleet.nodes import Fleet  # noqa: E402
from tests.fleet.pki import make_pki  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IMAGES = ROOT / "docs" / "images"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def restores(fleet: Fleet, workdir: Path, api_url: str) -> list[str]:
    """Run the restore through and once rolled back; the flow run ids."""
    spec = fleet.spec("uk8s-f1wymalx")
    access = etcd.EtcdAccess(
        tuple(spec.endpoints), ca=spec.ca_pem, cert=spec.cert_pem, key=spec.key_pem.get_secret_value()
    )
    with fleet.client() as client:
        fill(client, 3000, 2000)
    pipeline.backup(access, LocalStore(workdir / "backups"), cluster_id=spec.cluster_id)
    ids = []
    with temporary_settings({PREFECT_API_URL: api_url}):
        EtcdCluster.from_spec(spec).save("prod", overwrite=True)
        LocalStorage(directory=str(workdir / "backups")).save("prod", overwrite=True)
        for fail in (False, True):
            fleet.lose_quorum("fail")
            if fail:
                fail_subcommand(
                    fleet.node("etcd3"),
                    "etcdutl",
                    "snapshot restore",
                    "Error: snapshot file is damaged (injected)",
                    delay=1,
                )
            state = restore_cluster(
                cluster="prod", storage="local-directory-storage/prod", confirm=True, return_state=True
            )
            print(f"flow run {state.state_details.flow_run_id}: {state.type.value} {state.message or ''}")
            ids.append(str(state.state_details.flow_run_id))
    return ids


def shoot(api_url: str, run_id: str, path: Path) -> None:
    """Open the flow run in the UI, show its graph (the run's task runs on a timeline) full screen, and save it."""
    ui = api_url.removesuffix("/api")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 680}, device_scale_factor=2)
        page.goto(f"{ui}/runs/flow-run/{run_id}", wait_until="networkidle")
        time.sleep(4)  # the graph is drawn on a canvas after the data arrives
        page.click("button[title='Toggle fullscreen (f)']")
        time.sleep(4)
        page.screenshot(path=str(path))
        browser.close()
    print(f"wrote {path}")


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="screenshots-") as tmp:
        workdir = Path(tmp)
        fleet = Fleet(workdir / "fleet", make_pki(workdir / "pki", fleet_net()), 3, "3.5.1")
        server = LocalPrefectServer(workdir / "prefect", port=free_port())
        os.environ["PREFECT_UI_API_URL"] = server.api_url  # the UI asks this API (its default is port 4200)
        try:
            fleet.start()
            server.start()
            ok, rolled_back = restores(fleet, workdir, server.api_url)
            time.sleep(5)  # let the task run events reach the server
            shoot(server.api_url, ok, IMAGES / "restore-graph.png")
            shoot(server.api_url, rolled_back, IMAGES / "restore-rolled-back.png")
        finally:
            server.stop()
            fleet.stop()


if __name__ == "__main__":
    main()
