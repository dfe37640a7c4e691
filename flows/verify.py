"""The verify flow: prove a backup restores into a working etcd holding what the source held."""

from __future__ import annotations

import os
import tempfile

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from blocks import AgeIdentity, load_cluster, load_storage
from blocks.loading import load_block
from etcd_backup import catalog, flow_names
from etcd_backup.storage.base import Storage
from flows import locks
from flows.failures import readable_failures
from flows.notify import notify_on_failure
from tasks.artifacts import artifact_key
from tasks.restore import choose_backup
from tasks.verify import fetch_exactly, record_verification, restore_in_scratch

WORK_DIR = os.environ.get("ETCD_BACKUP_WORK_DIR")  # where the fetched snapshot and the scratch etcd live meanwhile


@flow(name=flow_names.VERIFY_BACKUP, on_failure=[notify_on_failure])
@readable_failures
@locks.transfer_slot
def verify_backup(
    cluster: str,
    storage: str,
    backup: str = "latest",
    identity: str | None = None,
    prefixes: list[str] | None = None,
    notify: str | None = None,
) -> catalog.Verification:
    """Fetch a backup, check its digests, restore it into a scratch etcd here and compare it with its certificate.

    Args:
        cluster: name of the EtcdCluster block
        storage: storage block holding the backups, as '<block-type-slug>/<name>'
        backup: "latest" (the newest complete backup) or the key of one backup
        identity: AgeIdentity block name, for encrypted backups
        prefixes: key prefixes that must hold keys (default: /registry/namespaces/ when the data is Kubernetes')
        notify: notification block as '<block-type-slug>/<name>' to alert on failure
    """
    target = load_cluster(cluster)
    age = load_block(identity, AgeIdentity, "identity block") if identity else None
    with load_storage(storage).build() as store:
        chosen = choose_backup(store, target.cluster_id, backup, allow_older=False)
        return verify_steps(store, target.cluster_id, chosen.backup.key, age, prefixes)


def verify_steps(
    store: Storage, cluster_id: str, key: str, identity: AgeIdentity | None, prefixes: list[str] | None
) -> catalog.Verification:
    """Fetch and check key, restore it into a scratch etcd, record the result, publish it; raise when it failed."""
    with tempfile.TemporaryDirectory(prefix="etcd-verify-", dir=WORK_DIR) as work:
        snapshot = os.path.join(work, "snapshot.db")
        fetched = fetch_exactly(store, key, identity, snapshot)
        certificate = fetched.manifest.certificate if fetched.manifest else None
        report = restore_in_scratch(snapshot, certificate, prefixes, work)
    record = record_verification(store, key, report)
    create_markdown_artifact(verification_markdown(record), key=artifact_key("verification", cluster_id))
    report.raise_if_failed()
    return record


def verification_markdown(record: catalog.Verification) -> str:
    """What a person reads after a verification: the verdict, what the restored copy held, the differences."""
    r = record.report
    verdict = "restores and matches its certificate" if r.ok and r.compared else "restores and serves"
    lines = [
        f"# Verification of `{record.key}`: {verdict if r.ok else 'FAILED'}",
        "",
        f"- restored into a scratch etcd {r.etcd_version} in {r.seconds:.1f} s",
        f"- revision {r.revision}, {r.key_count} keys, HashKV `{r.hash:#010x}`",
        f"- key prefixes checked: {', '.join(r.prefixes) or 'none'}",
    ]
    lines += [f"- **difference**: {d}" for d in r.differences]
    return "\n".join(lines) + "\n"
