"""Tasks of the verify flow: restore a fetched snapshot into a scratch etcd here, and record the result."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks import AgeIdentity
from etcd_backup import catalog, pipeline
from etcd_backup.certificate import Certificate
from etcd_backup.storage.base import Storage
from etcd_backup.verify import VerifyReport, verify_restorable
from tasks.retry import RETRY


@task(name="fetch-backup", cache_policy=NO_CACHE, timeout_seconds=6 * 3600, **RETRY)
def fetch_exactly(store: Storage, key: str, identity: AgeIdentity | None, dest: str) -> pipeline.VerifyResult:
    """Stream this backup (no other) to dest, checking sha256 against its manifest and the snapshot's trailer."""
    ids = [identity.identity.get_secret_value()] if identity else []
    info = pipeline.fetch_snapshot(store, key, dest, ids)
    get_run_logger().info("verified the digests of %s: %d raw bytes, sha256 %s", key, info.raw_size, info.raw_sha256)
    return info


@task(name="restore-in-scratch-etcd", cache_policy=NO_CACHE, timeout_seconds=6 * 3600)
def restore_in_scratch(
    snapshot_path: str, certificate: Certificate | None, prefixes: list[str] | None, work: str
) -> VerifyReport:
    """Restore the snapshot into a single-member etcd on loopback, compare it with its certificate, remove it."""
    report = verify_restorable(snapshot_path, certificate, prefixes, workdir=work)
    logger = get_run_logger()
    (logger.info if report.ok else logger.error)("step verify with etcd %s: %s", report.etcd_version, report.summary())
    return report


@task(name="record-verification", cache_policy=NO_CACHE, **RETRY)
def record_verification(store: Storage, key: str, report: VerifyReport) -> catalog.Verification:
    """Write `<name>.verified.json` next to the backup's manifest."""
    record = catalog.write_verification(store, key, report)
    get_run_logger().info("wrote %s on %s", catalog.verified_key(key), store.describe())
    return record
