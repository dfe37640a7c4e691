"""Faults during a whole-cluster restore on the master-node fleet: a node lost, a full disk, etcd not starting, a kill.

Each case checks what the run says and that nothing was lost: every node is back as it was byte for
byte (tests/test_restore_cluster.py `assert_as_before`: only the run dir under /var/lib is new) or
restored with the backup's data, and the backup is still listed and restorable. Faults: a TCP relay
in front of one node's sshd that vanishes; a small tmpfs as one node's /var/lib, filled by "another
process" while `snapshot restore` runs; a listener on one member's peer port; SIGKILL of the process
running the flow.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL

from blocks import EtcdCluster
from etcd_backup.storage.local import LocalStorage as LocalStore
from flows import restore_report
from tests.faults.checks import assert_restorable
from tests.fleet import namespace
from tests.fleet.fixtures import require_root, start
from tests.fleet.nodes import Fleet
from tests.restore_helpers import fleet_state, journal_showing
from tests.servers.tcp_proxy import TCPProxy
from tests.test_restore_cluster import CLUSTER_ID, Setup, assert_as_before, assert_restored
from tests.waiting import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.restore, pytest.mark.fleet, pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def reports(monkeypatch, tmp_path) -> Path:
    """This test's own journal and report dir (in-process runs), so its journal is the only one there."""
    directory = tmp_path / "reports"
    monkeypatch.setattr(restore_report, "REPORT_DIR", directory)
    return directory


def wrap_restore(node, before: str) -> None:
    """Make the node's etcdutl run `before` (shell) ahead of a `snapshot restore`; everything else is the real tool."""
    real = node.path("/root/etcdutl.real")
    real.write_bytes(node.path("/usr/bin/etcdutl").read_bytes())
    real.chmod(0o755)
    script = f'#!/bin/sh\nif [ "$2" = restore ]; then\n{before}\nfi\nexec /root/etcdutl.real "$@"\n'
    with open(node.path("/usr/bin/etcdutl"), "r+b") as f:  # in place: the path is a bind mount
        f.truncate(0)
        f.write(script.encode())


HOLD = "touch /root/restoring; i=0; while [ ! -e /root/go ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done"


def hold_restores(nodes, then) -> threading.Thread:
    """Once every node's `snapshot restore` is held (wrap_restore(node, HOLD)), call then() and let them go on."""

    def run() -> None:
        wait_until(lambda: all(n.path("/root/restoring").exists() for n in nodes), "every restore held", 300, 0.05)
        try:
            then()
        finally:
            for n in nodes:
                n.path("/root/go").touch()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def release_lock(cluster: str) -> None:
    """Delete the cluster's lock as an operator would (UI: Concurrency); the next run creates it anew."""
    from prefect.client.orchestration import get_client

    from flows.locks import cluster_lock

    with get_client(sync_client=True) as client:
        client.delete_global_concurrency_limit_by_name(cluster_lock(cluster))


def unhold(nodes) -> None:
    """Remove the hold's own files."""
    for n in nodes:
        for name in ("restoring", "go"):
            n.path(f"/root/{name}").unlink(missing_ok=True)


def begun(step: str) -> str:
    return f'"event": "begin", "name": "{step}"'


def relayed(setup: Setup, node) -> TCPProxy:
    """A relay in front of the node's sshd, and the cluster block pointing at it (its host key pinned there too)."""
    relay = TCPProxy(node.ip, 22, listen_host=node.ip)
    spec = setup.fleet.spec(CLUSTER_ID)
    spec.nodes[[n.name for n in spec.nodes].index(node.name)].ssh_port = relay.port
    spec.ssh.known_hosts += f"[{node.ip}]:{relay.port} {node.host_key}\n"
    EtcdCluster.from_spec(spec).save(setup.cluster, overwrite=True)
    return relay


def restores_running(fleet) -> list[int]:
    """Pids of `snapshot restore` processes still running on the fleet's nodes."""
    found = []
    for node in fleet.nodes:
        for pid in namespace.members(node.namespace):
            try:
                if b"restore" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                pass
    return found


def same_file(recorded, path: Path) -> bool:
    """Whether path is the file fleet_state recorded: same sha256, or same inode for a running member's data."""
    if isinstance(recorded, int):
        return path.stat().st_ino == recorded
    return hashlib.sha256(path.read_bytes()).hexdigest() == recorded


def restorable(setup: Setup, workdir: Path) -> None:
    assert_restorable(LocalStore(setup.dir), CLUSTER_ID, [setup.record.key], workdir)


def test_a_node_unreachable_after_the_checks_changes_no_node(prefect_api, fleet, tmp_path, reports):
    setup = Setup(fleet, tmp_path, keys=600, value_size=6000)  # a 2 MB zstd upload: the cut falls inside it
    etcd3 = fleet.node("etcd3")
    fleet.lose_quorum("fail")
    before = fleet_state(fleet)
    with relayed(setup, etcd3) as relay:
        relay.cut_after(1 << 20)  # the checks (facts) take a few KB: etcd3 is gone from the upload on, for good
        state = setup.run(confirm=True)
    assert relay.cuts == 1
    assert state.is_failed()
    assert "FAILED before any node was changed (its run dir on etcd3 could not be cleaned up)" in state.message
    assert "[upload snapshot @ etcd3]" in state.message and "cannot reach root@" in state.message, state.message
    assert_as_before(before, fleet_state(fleet))
    restorable(setup, tmp_path)


def test_a_node_lost_mid_restore_is_rolled_back_elsewhere_and_by_its_script_there(
    prefect_api, fleet, tmp_path, reports
):
    setup = Setup(fleet, tmp_path)
    etcd3 = fleet.node("etcd3")
    fleet.lose_quorum("fail")
    wrap_restore(etcd3, HOLD)
    before = fleet_state(fleet)
    with relayed(setup, etcd3) as relay:
        cut = hold_restores([etcd3], relay.vanish)
        state = setup.run(confirm=True)  # etcd3's SSH goes away while its `snapshot restore` runs
        cut.join()
        run_id = state.message.split("/var/lib/etcd-restore-")[1].split("/")[0]
        run = f"/var/lib/etcd-restore-{run_id}"
        assert state.is_failed()
        assert f"FAILED and was NOT fully rolled back (finish it with `sh {run}/rollback.sh` on etcd3" in state.message
        assert "[snapshot restore @ etcd3]" in state.message and "lost its SSH connection" in state.message
        # the command itself goes on on etcd3
        wait_until(lambda: not restores_running(fleet), "the restores to end", 300, 0.05)
        after = fleet_state(fleet)
        assert_as_before({n: before[n] for n in ("etcd1", "etcd2")}, {n: after[n] for n in ("etcd1", "etcd2")})
        assert etcd3.path(f"{run}/unfinished").exists()
        assert etcd3.path(f"/var/lib/etcd.bak-{run_id}/default.etcd/member/snap/db").exists()  # the old data, kept
        # what the next run would find there and say: the killed-flow case below

    etcd3.ssh(f"sh {run}/rollback.sh")  # the operator finishes the rollback where the flow could not
    unhold([etcd3])
    assert_as_before(before, fleet_state(fleet))
    restorable(setup, tmp_path)


@pytest.fixture
def small_disk_fleet(tmp_path_factory, fleet_pki):
    """A 3.5.1 fleet whose etcd3 has a 320 MiB tmpfs as /var/lib (mounted before its sshd's namespace is made)."""
    require_root()
    with contextlib.ExitStack() as stack:
        fleet = Fleet(tmp_path_factory.mktemp("fleet"), fleet_pki)
        var_lib = fleet.node("etcd3").root / "var/lib"
        var_lib.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=320m", "tmpfs", str(var_lib)], check=True)
        try:
            yield start(fleet, stack)
        finally:
            subprocess.run(["umount", "-l", str(var_lib)], check=False)


def test_a_disk_filling_up_during_snapshot_restore_rolls_every_node_back(
    prefect_api, small_disk_fleet, tmp_path, reports
):
    fleet = small_disk_fleet
    setup = Setup(fleet, tmp_path)
    etcd3 = fleet.node("etcd3")
    fleet.lose_quorum("fail")
    filler = "/var/lib/other-app.log"  # another process fills the disk while etcd3 restores
    free = "$(df -PB1 /var/lib | awk 'NR==2 {print $4}')"
    wrap_restore(etcd3, f"fallocate -l $(({free} - 4194304)) {filler}")
    before = fleet_state(fleet)
    state = setup.run(confirm=True)
    assert state.is_failed() and "FAILED and was rolled back" in state.message, state.message
    assert "[snapshot restore @ etcd3]" in state.message and "no space left on device" in state.message
    etcd3.path(filler).unlink()  # the operator frees the disk
    assert_as_before(before, fleet_state(fleet))
    restorable(setup, tmp_path)


def test_etcd_failing_to_start_on_one_member_rolls_every_node_back(prefect_api, fleet, tmp_path, reports):
    setup = Setup(fleet, tmp_path)
    etcd3 = fleet.node("etcd3")
    fleet.lose_quorum("fail")
    before = fleet_state(fleet)
    with socket.create_server((etcd3.ip, 2380)):  # another program holds etcd3's peer port
        state = setup.run(confirm=True)
    assert state.is_failed() and "FAILED and was rolled back" in state.message, state.message
    assert "[start etcd @ etcd3]" in state.message and "address already in use" in state.message
    assert_as_before(before, fleet_state(fleet))
    assert fleet_state(fleet)["etcd1"]["running"]
    restorable(setup, tmp_path)


def test_the_flow_killed_mid_restore_is_found_by_the_next_run_which_restores_once_told_to(prefect_api, fleet, tmp_path):
    setup = Setup(fleet, tmp_path)
    fleet.lose_quorum("fail")
    for node in fleet.nodes:
        wrap_restore(node, HOLD)
    before = fleet_state(fleet)
    reports = tmp_path / "reports"
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "ETCD_BACKUP_REPORT_DIR": str(reports),
    }
    call = f"restore_cluster(cluster={setup.cluster!r}, storage={setup.storage!r}, confirm=True)"
    script = f"from flows.restore_cluster import restore_cluster\n{call}\n"
    with open(tmp_path / "flow.log", "w") as log:
        flow = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=log, stderr=subprocess.STDOUT)
        kill = hold_restores(fleet.nodes, lambda: flow.send_signal(signal.SIGKILL))  # while every node restores
        assert flow.wait(300) == -signal.SIGKILL
        kill.join()
    journal = journal_showing(reports, begun("snapshot restore @ etcd3"), timeout=5)
    # what the nodes were doing goes on without the flow
    wait_until(lambda: not restores_running(fleet), "the restores to end", 300, 0.05)
    run_id = journal.stem.rsplit("-", 1)[1]
    run = f"/var/lib/etcd-restore-{run_id}"
    events = [json.loads(line) for line in journal.read_text().splitlines()]
    assert not [e for e in events if e["event"] == "undo"] and not journal.with_suffix(".md").exists()
    for node in fleet.nodes:  # what the killed run left: its marker, its rollback script, the old data set aside
        marker = node.path(f"{run}/unfinished").read_text()
        assert f"restore run {run_id} of cluster {CLUSTER_ID}" in marker and str(journal) in marker
        assert node.path(f"/var/lib/etcd.bak-{run_id}/default.etcd/member/snap/db").exists()
    left = fleet_state(fleet)

    again = setup.run(dry_run=True)  # the next run, even a dry run, names what the killed one left and the ways out
    assert again.is_failed(), again.message
    assert f"restore run {run_id} never finished on etcd1, etcd2, etcd3" in again.message
    assert f"`sh {run}/rollback.sh` on etcd1, etcd2, etcd3" in again.message
    assert f"`rm {run}/unfinished` on etcd1, etcd2, etcd3" in again.message
    assert fleet_state(fleet) == left  # refused before any change

    fleet.on_nodes(fleet.nodes, f"rm {run}/unfinished")  # keep the nodes as they are and restore again
    release_lock(setup.cluster)  # the killed run's lock would free itself when its 10-minute lease runs out
    rerun = setup.run(confirm=True)
    assert rerun.is_completed(), rerun.message
    assert_restored(setup, rerun.result())
    for node in fleet.nodes:  # the data the killed run set aside is still there, untouched
        kept = node.path(f"/var/lib/etcd.bak-{run_id}/default.etcd/member/snap/db")
        assert same_file(before[node.name]["var/lib/etcd/default.etcd/member/snap/db"], kept), node.name
    restorable(setup, tmp_path)
