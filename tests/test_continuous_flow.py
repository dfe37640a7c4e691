"""The etcd-continuous-backup flow through a real Prefect API and real etcd: a new chain takes its full backup,
a restart resumes after the last uploaded segment, a compacted start revision takes a full backup at once,
the lag alert fires when storage stalls and clears when it is back, and retention and listing see segments."""

from __future__ import annotations

import http.server
import json
import secrets
import threading
import time

import pytest
from pyetcd import etcdrpc

from blocks import EtcdCluster, LocalStorage, S3Storage
from etcd_backup import etcd
from etcd_backup.catalog import list_backups as stored_backups
from etcd_backup.continuous.catalog import Catalog
from etcd_backup.storage.local import LocalStorage as LocalStore
from flows.backup import list_backups, prune_backups
from flows.continuous import continuous_backup
from tests.continuous_helpers import WriteLoad, access_of, revision_now, stop_write_loads  # noqa: F401 - autouse fixture
from tests.prefect_fixtures import register_secret
from tests.restore_helpers import artifacts
from tests.servers.fixtures import make_s3
from tests.servers.tcp_proxy import TCPProxy

pytestmark = [pytest.mark.continuous, pytest.mark.backup, pytest.mark.slow]
CLUSTER_ID = "uk8s-contflow"


def _name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def _cluster_block(cluster) -> str:
    name = _name("cluster")
    EtcdCluster(
        cluster_id=CLUSTER_ID,
        endpoints=cluster.endpoints,
        ca_pem=cluster.ca.read_text(),
        cert_pem=cluster.cert.read_text(),
        key_pem=cluster.key.read_text(),
    ).save(name)
    return name


def _save(block) -> str:
    name = _name("store")
    block.save(name)
    return f"{block.get_block_type_slug()}/{name}"


class _Hook(http.server.BaseHTTPRequestHandler):
    texts: list[str] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        self.texts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["text"])
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook(prefect_api):
    """A notification block posting to a local receiver; yields (block ref, received texts)."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.texts = []
    block = CustomWebhookNotificationBlock(
        name="lag", url=f"http://127.0.0.1:{server.server_address[1]}/hook", allow_private_urls=True,
        json_data={"text": "{{subject}}: {{body}}"},
    )  # fmt: skip
    yield _save(block), _Hook.texts
    server.shutdown()


def _compact_now(access: etcd.EtcdAccess) -> int:
    endpoint = access.endpoints[0]
    revision = revision_now(access, endpoint)
    with etcd.channel(access, endpoint) as chan:
        etcdrpc.KVStub(chan).Compact(etcdrpc.CompactionRequest(revision=revision, physical=True), timeout=10)
    return revision


def test_new_chain_then_resume_then_compacted_start_and_retention(prefect_api, make_etcd_cluster, tmp_path):
    cluster = make_etcd_cluster(1)
    access = access_of(cluster)
    block, store_dir = _cluster_block(cluster), tmp_path / "store"
    storage = _save(LocalStorage(directory=str(store_dir)))
    store = LocalStore(store_dir)
    load = WriteLoad(access, rate=150, seed=21).start()
    run = dict(cluster=block, storage=storage, segment_seconds=0.5, report_seconds=1, run_minutes=0.08)

    first = continuous_backup(**run)  # no full backup yet: follow, then take one at once
    assert len(first["full_backups"]) == 1 and first["restarts"] == [] and first["uploads"] > 0
    second = continuous_backup(**run)  # resumes after the last uploaded segment: no new full backup
    assert second["start_revision"] == first["uploaded_revision"] + 1 and second["full_backups"] == []
    load.stop()
    compacted = _compact_now(access)  # the history the next run would resume from is gone
    load = WriteLoad(access, rate=150, seed=22).start()
    third = continuous_backup(**run)
    load.stop()
    resumed, new_chain = third["runs"]
    assert resumed == [second["uploaded_revision"] + 1, second["uploaded_revision"]]  # nothing followed from there
    assert f"revision {resumed[0]} is compacted" in third["restarts"][0] and len(third["restarts"]) == 1
    assert len(third["full_backups"]) == 1 and new_chain[0] > compacted and third["uploaded_revision"] == new_chain[1]

    catalog = Catalog(store, CLUSTER_ID)
    found = catalog.coverage()
    assert [(r.first, r.backup) for r in found.reachable] == [(b.manifest.revision, b.key) for b in catalog.backups], (
        found.reachable
    )  # one unbroken interval per chain
    assert [(g.first, g.last) for g in found.gaps] == [(resumed[0], new_chain[0] - 1)]
    state = list_backups(cluster=block, storage=storage, return_state=True)
    text = artifacts(state)[f"coverage-{CLUSTER_ID}"]
    assert f"revisions {found.reachable[0].first}..{found.reachable[0].last}" in text and "**gap**" in text

    removed = prune_backups(cluster=block, storage=storage, keep=1, dry_run=False)
    newest = stored_backups(store, CLUSTER_ID)
    assert [b.key for b in newest] == third["full_backups"] and first["full_backups"][0] in removed
    left = Catalog(store, CLUSTER_ID)
    assert left.coverage().gaps == [] and left.listing.complete, "segments of the newest chain stay"
    assert all(s.last_revision > newest[0].manifest.revision_low for s in left.listing.complete)
    assert any(k.endswith(".evl.zst") for k in removed)


def test_lag_alert_when_storage_stalls(prefect_api, make_etcd_cluster, seaweedfs, webhook):
    hook, texts = webhook
    cluster = make_etcd_cluster(1)
    access = access_of(cluster)
    port = int(seaweedfs.endpoint.rsplit(":", 1)[1])
    register_secret("the S3 secret key", seaweedfs.secret_key)
    with TCPProxy("127.0.0.1", port) as proxy:
        bucket = seaweedfs.make_bucket()
        storage = _save(
            S3Storage(
                endpoint_url=f"http://127.0.0.1:{proxy.port}", region="us-east-1", bucket=bucket, prefix="backups",
                access_key_id=seaweedfs.access_key, secret_access_key=seaweedfs.secret_key,
            )
        )  # fmt: skip
        load = WriteLoad(access, rate=100, seed=23).start()
        box: dict = {}
        params = dict(
            cluster=_cluster_block(cluster), storage=storage, segment_seconds=0.5, report_seconds=1,
            lag_alert_seconds=3, run_minutes=0.4, notify=hook,
        )  # fmt: skip
        thread = threading.Thread(target=lambda: box.update(result=continuous_backup(**params)), daemon=True)
        thread.start()
        direct = make_s3(seaweedfs, bucket)
        stored = lambda: " ".join(o.key for o in direct.list(""))  # noqa: E731
        both = lambda: ".evl.zst" in stored() and ".db.zst.manifest.json" in stored()  # noqa: E731
        _until(both, 60, "no segment or no full backup uploaded (the stall must come after both)")
        proxy.cut_after(0)
        _until(lambda: any("lags" in t for t in texts), 30, f"no lag alert: {texts}")
        proxy.heal()
        _until(lambda: any("recovered" in t for t in texts), 30, f"no recovery message: {texts}")
        thread.join(120)
        load.stop()
    result = box["result"]
    assert result["restarts"] == [] and result["max_lag_seconds"] > 3
    assert texts[0].startswith(f"etcd-continuous-backup: {CLUSTER_ID} lags ") and "upload errors" in texts[0]
    assert texts[1].startswith("lag recovered: ") and len(texts) == 2
    catalog = Catalog(direct, CLUSTER_ID)
    assert catalog.coverage().gaps == [] and len(catalog.coverage().reachable) == 1  # the stall lost nothing
    assert catalog.coverage().reachable[0].last == result["uploaded_revision"]


def _until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)
