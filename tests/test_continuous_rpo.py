"""RPO of continuous backup: under a steady write load every etcd member is SIGKILLed at random moments.

Ten kills per etcd version on a single-member cluster (host processes, TLS; the member restarts on its data
dir after each kill). At each kill the test records what etcd had acknowledged and what was uploaded; once
the follower (which outlives the cluster) has uploaded what it received, it records what is still missing.
Printed per kill: acknowledged writes not yet uploaded at the kill (what a site loss taking the follower too
would cost) and acknowledged writes missing from the segments after the upload (what losing the cluster for
good costs), each in writes and in seconds of writes.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import time

import pytest

from etcd_backup.continuous import records
from etcd_backup.continuous.catalog import Catalog
from etcd_backup.continuous.runner import ContinuousBackup
from etcd_backup.continuous.segment import load_segment
from etcd_backup.storage.local import LocalStorage
from tests.continuous_helpers import Run, WriteLoad, access_of, stop_write_loads  # noqa: F401 - autouse fixture
from tests.waiting import wait_until

pytestmark = [pytest.mark.continuous, pytest.mark.faults, pytest.mark.slow]
BOTH = pytest.mark.parametrize("etcd_version", ["3.5.1", "3.4.23"], indirect=True)
CLUSTER = "uk8s-rpo"
KILLS = 10
SEGMENT_SECONDS = 1.0
SLACK = 1.0  # seconds for the watch to deliver and the machine (2 cores, shared) to schedule


def _window(acked: list[tuple[int, float]], after: int, at: float) -> tuple[int, float]:
    """(writes acknowledged with a revision above `after`, seconds from the oldest of them to `at`)."""
    missing = [when for revision, when in acked if revision > after]
    return len(missing), max(0.0, at - min(missing)) if missing else 0.0


@BOTH
def test_data_lost_when_every_member_is_killed(make_etcd_cluster, etcd_version, tmp_path):
    cluster = make_etcd_cluster(1)
    access = access_of(cluster, timeout=2)
    storage = LocalStorage(tmp_path / "store")
    backup = ContinuousBackup(
        access, storage, CLUSTER, start_revision=None, segment_seconds=SEGMENT_SECONDS, progress_interval=0.5,
        give_up_after=None,
    )  # fmt: skip
    run = Run(backup)
    rnd = random.Random(f"rpo-{etcd_version}")
    rows, acked = [], []
    for kill in range(KILLS):
        current = lambda: backup.follower.endpoint and backup.lag().revisions == 0  # noqa: E731
        wait_until(current, f"the follower to catch up: {backup.lag()}", 30, every=0.05)
        load = WriteLoad(access, rate=300, seed=kill, lease_ttl=2).start()
        time.sleep(rnd.uniform(0.3, 1.5))  # short windows: the kill moment is what varies
        killed_at, uploaded_at_kill = time.time(), backup.writer.uploaded_revision
        os.kill(cluster.members[0].process.pid, signal.SIGKILL)
        load.stop()
        wait_until(
            lambda: backup.lag().pending_segments == 0, f"the upload: {backup.lag()}", SEGMENT_SECONDS + 30, 0.05
        )
        acked += load.acked
        at_risk = _window(load.acked, uploaded_at_kill, killed_at)
        lost = _window(load.acked, backup.writer.uploaded_revision, killed_at)
        rows.append((kill, len(load.acked), *at_risk, *lost, backup.lag().upload_seconds))
        cluster.members[0].process = None
        cluster.start_member(0)
    run.drain_and_stop(access)
    print(f"\netcd {etcd_version}, segment_seconds {SEGMENT_SECONDS}, {KILLS} kills of every member under load:")
    print("kill  acked  not-uploaded-at-kill (writes, s)  missing-after-upload (writes, s)  longest upload (s)")
    for kill, total, risk_n, risk_s, lost_n, lost_s, upload in rows:
        print(f"{kill:4d} {total:6d}  {risk_n:10d} {risk_s:8.2f}            {lost_n:10d} {lost_s:8.2f}   {upload:8.3f}")
    risks, losses = [r[3] for r in rows], [r[5] for r in rows]
    print(f"not uploaded at kill: median {statistics.median(risks):.2f} s, max {max(risks):.2f} s; "
          f"missing after upload: {sum(r[4] for r in rows)} writes in {sum(1 for r in rows if r[4])} of {KILLS} kills, "
          f"max {max(losses):.2f} s")  # fmt: skip
    bound = SEGMENT_SECONDS + max(r[6] for r in rows) + SLACK
    assert max(risks) <= bound and max(losses) <= bound, f"more than {bound:.2f} s of acknowledged writes"
    revisions = _stored_revisions(storage)
    assert revisions == list(range(backup.start_revision, revisions[-1] + 1))  # one history, no gap, no duplicate
    assert {revision for revision, _ in acked} <= set(revisions)  # what the restarted member kept was followed on


def _stored_revisions(storage) -> list[int]:
    catalog = Catalog(storage, CLUSTER)
    return [
        record.revision
        for segment in catalog.listing.complete
        for record in records.decode(load_segment(storage, catalog.manifest(segment)), segment.key)
    ]
