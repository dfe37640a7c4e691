"""Pure parts of the restore: version decisions, etcd.conf rewrite, retained node, backup choice, plan, undo order."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from datetime import UTC, datetime

import pytest

from etcd_backup.catalog import Backup
from etcd_backup.cluster import ClusterSpec
from etcd_backup.errors import BackupCorrupt, NodeError, RestoreRefused
from etcd_backup.facts import FILE_KEYS, NodeFacts
from etcd_backup.pipeline import VerifyResult
from etcd_backup.restore import commands as c
from etcd_backup.restore.actions import Run, Step
from etcd_backup.restore.cluster import choose_retained, plan_cluster_restore, refuse_if_quorum
from etcd_backup.restore.conf import rewrite_conf
from etcd_backup.restore.executor import ExecutionReport, Journal, Runner, StepResult, undo_order
from etcd_backup.restore.facts import RestoreFacts
from etcd_backup.restore.plan import RestoreOptions
from etcd_backup.restore.render import outcome
from etcd_backup.restore.source import choose_backup
from tests.factories import cluster_spec
from tests.factories import manifest as factory_manifest

pytestmark = pytest.mark.restore

IPS = {"etcd1": "10.23.166.234", "etcd2": "10.23.172.172", "etcd3": "10.23.95.6"}
CONF = """#[Member]
ETCD_NAME=etcd1
ETCD_DATA_DIR="/var/lib/etcd/default.etcd"
ETCD_LISTEN_PEER_URLS="https://10.23.166.234:2380"
ETCD_INITIAL_ADVERTISE_PEER_URLS="https://10.23.166.234:2380"
ETCD_ADVERTISE_CLIENT_URLS="https://10.23.166.234:2379,https://10.23.166.2349:1"
ETCD_INITIAL_CLUSTER="etcd1=https://10.23.166.234:2380,etcd2=https://10.23.172.172:2380,etcd3=https://10.23.95.6:2380"
ETCD_INITIAL_CLUSTER_STATE="new"
ETCD_INITIAL_CLUSTER_TOKEN="etcd-cluster"
"""
SNAP_KEY = "uk8s-x-backup-etcd-3.5.1-2024-01-01T00-00-00.db.zst"
SNAP = VerifyResult(
    key=SNAP_KEY,
    size=4 << 20,
    sha256="cd" * 32,
    raw_size=10 << 20,
    raw_sha256="ab" * 32,
    manifest=factory_manifest(
        SNAP_KEY, size=4 << 20, sha256="cd" * 32, raw_size=10 << 20, raw_sha256="ab" * 32, revision=100, key_count=50
    ),
)
OPTIONS = RestoreOptions(run_id="20240101T000000Z")


def spec() -> ClusterSpec:
    return cluster_spec(IPS)


def node_facts(
    name: str,
    *,
    files: bool = True,
    version: str = "3.5.1",
    active: bool = False,
    reachable: bool = True,
    free: int | None = 50 << 30,
    etcdutl: bool | None = None,
    kube: bool = True,
    kube_active: tuple = (),
) -> RestoreFacts:
    have = {k: files for k in FILE_KEYS}
    have["etcdutl_bin"] = files and (version >= "3.5" if etcdutl is None else etcdutl)
    base = NodeFacts(
        name=name,
        ip=IPS[name],
        reachable=reachable,
        error=None if reachable else "timed out",
        files=have if reachable else {},
        etcd_version=version if files else None,
        etcd_active=active,
        data_dir_present=files,
        free_bytes=free,
    )
    cp = {
        k: files and kube
        for k in ("hyperkube", "kubectl", "kubeconfig", "apiserver_conf", "ifcfg-lo:internal", "ifcfg-lo:external")
    }
    cp["zstd"] = reachable
    units = ("kube-apiserver.service", "kube-scheduler.service") if files and kube else ()
    return RestoreFacts(
        node=base,
        conf_text=CONF.replace("etcd1", name).replace(IPS["etcd1"], IPS[name]) if files else None,
        etcd_enabled=files,
        kube_active=kube_active,
        files=cp,
        kube_units=units,
    )


def deleted(version="3.5.1", **kw):
    """Case 3.2.2: etcd1 kept, etcd2 and etcd3 recreated bare."""
    return [
        node_facts("etcd1", version=version, active=True, **kw),
        node_facts("etcd2", files=False),
        node_facts("etcd3", files=False),
    ]


def commands(plan, node, phase=None):
    return [a.cmd for s in plan.for_node(node) if phase in (None, s.phase) for a in s.actions if isinstance(a, Run)]


# --- decisions -----------------------------------------------------------------


@pytest.mark.parametrize(
    "version,bump",
    [
        ("3.3.17", False),
        ("3.4.23", False),
        ("3.4.26", False),
        ("3.4.27", True),
        ("3.4.30", True),
        ("3.5.1", False),
        ("3.5.9", False),
        ("3.5.10", True),
        ("3.5.17", True),
        ("3.6.0", True),
        ("v3.6.4", True),
    ],
)
def test_bump_revision_only_where_etcd_has_it(version, bump):
    assert c.supports_bump(c.parse_version(version)) is bump


@pytest.mark.parametrize(
    "version,etcdutl,tool",
    [
        ("3.3.17", False, "etcdctl"),
        ("3.4.23", False, "etcdctl"),
        ("3.5.1", True, "etcdutl"),
        ("3.5.1", False, "etcdctl"),
        ("3.6.0", True, "etcdutl"),
        ("3.6.0", False, None),
    ],
)
def test_restore_tool_by_version(version, etcdutl, tool):
    assert c.restore_tool(c.parse_version(version), etcdutl) == tool


def test_conf_rewrite_follows_the_runbook_loop_and_sets_the_new_cluster():
    out = rewrite_conf(
        CONF,
        name="etcd2",
        source_ip=IPS["etcd1"],
        node_ip=IPS["etcd2"],
        initial_cluster="a=https://1.1.1.1:2380",
        token="tok-1",
    )
    assert "ETCD_NAME=etcd2\n" in out
    assert 'ETCD_LISTEN_PEER_URLS="https://10.23.172.172:2380"' in out
    assert "https://10.23.166.2349:1" in out  # a longer address is not touched
    assert 'ETCD_INITIAL_CLUSTER="a=https://1.1.1.1:2380"' in out
    assert 'ETCD_INITIAL_CLUSTER_TOKEN="tok-1"' in out and 'ETCD_INITIAL_CLUSTER_STATE="existing"' in out
    assert IPS["etcd1"] + ":" not in out and out.count("ETCD_NAME=") == 1


def test_conf_rewrite_adds_missing_cluster_keys():
    out = rewrite_conf("ETCD_NAME=x\n", name="etcd1", source_ip="1", node_ip="1", initial_cluster="ic", token="t")
    assert 'ETCD_INITIAL_CLUSTER_TOKEN="t"' in out and 'ETCD_INITIAL_CLUSTER="ic"' in out


def test_retained_node_prefers_full_nodes_and_refuses_without_one():
    facts = [node_facts("etcd1", kube=False), node_facts("etcd2", active=True), node_facts("etcd3", files=False)]
    assert choose_retained(facts).name == "etcd2"
    assert choose_retained(facts, "etcd1").name == "etcd1"
    with pytest.raises(RestoreRefused, match="lacks"):
        choose_retained(facts, "etcd3")
    with pytest.raises(RestoreRefused, match="no node can be the source.*etcd2: not reachable"):
        choose_retained([node_facts("etcd1", files=False), node_facts("etcd2", reachable=False)])


def test_whole_cluster_restore_is_refused_while_quorum_holds():
    a, b, cc = (f"https://{ip}:2379" for ip in IPS.values())
    health = {a: "ok", b: "ok", cc: "DEADLINE_EXCEEDED"}
    with pytest.raises(RestoreRefused, match="etcd-restore-member"):
        refuse_if_quorum(spec(), health, force=False)
    refuse_if_quorum(spec(), health, force=True)
    refuse_if_quorum(spec(), {**health, b: "UNAVAILABLE"}, force=False)
    refuse_if_quorum(spec(), health, force=False, members=5)  # two of five members are no quorum


# --- backup choice -----------------------------------------------------------------


def backup(key_time: str, *, complete=True, legacy=False, cluster="uk8s-x", compression="zstd", problem=None, mc=None):
    when = datetime.strptime(key_time, "%Y-%m-%dT%H-%M-%S").replace(tzinfo=UTC)
    ext = {"zstd": ".db.zst", "tar.gz": ".db.tar.gz", "none": ".db"}[compression]
    key = f"{cluster}-backup-etcd-3.5.1-{key_time}{ext}"
    manifest = None
    if complete or problem:
        manifest = factory_manifest(key, cluster=mc or cluster, size=1, created=when)
    return Backup(
        key=key,
        cluster_id=cluster,
        time=when,
        size=1,
        compression=compression,
        encrypted=False,
        complete=complete and not problem,
        legacy=legacy,
        manifest=manifest,
        problem=problem,
    )


def test_latest_is_the_newest_complete_backup_else_the_newest_legacy_one():
    old, new, partial = (
        backup("2024-01-01T00-00-00"),
        backup("2024-02-01T00-00-00"),
        backup("2024-03-01T00-00-00", complete=False),
    )
    legacy = backup("2024-04-01T00-00-00", complete=False, legacy=True, compression="tar.gz")
    choice = choose_backup([old, new, partial, legacy], "uk8s-x")
    assert choice.backup.key == new.key
    assert [k for k, _ in choice.skipped] == [legacy.key, partial.key]  # newest first, each with why
    assert "upload still running" in dict(choice.skipped)[partial.key] and partial.key in choice.describe()
    assert choose_backup([partial, legacy], "uk8s-x").backup.key == legacy.key
    with pytest.raises(RestoreRefused, match="no complete backup"):
        choose_backup([partial], "uk8s-x")


def test_latest_refuses_when_a_newer_backup_fails_its_manifest_unless_allow_older():
    old = backup("2024-01-01T00-00-00")
    bad = backup("2024-02-01T00-00-00", problem="its size 7 differs from the 9 bytes its manifest records")
    with pytest.raises(RestoreRefused) as refused:
        choose_backup([old, bad], "uk8s-x")
    message = refused.value.message
    assert bad.key in message and "size 7 differs" in message and old.key in message and "allow_older" in message
    choice = choose_backup([old, bad], "uk8s-x", allow_older=True)
    assert choice.backup.key == old.key and choice.skipped == ((bad.key, bad.problem),)


def test_a_named_backup_must_be_this_clusters_and_usable():
    ok, partial = backup("2024-01-01T00-00-00"), backup("2024-03-01T00-00-00", complete=False)
    plain = backup("2024-05-01T00-00-00", complete=False, compression="none")
    truncated = backup("2024-06-01T00-00-00", problem="its size 1 differs from the 9 bytes its manifest records")
    assert choose_backup([ok, partial, plain], "uk8s-x", ok.key).backup is ok
    assert choose_backup([ok, plain], "uk8s-x", plain.key).backup is plain
    with pytest.raises(RestoreRefused, match="has no manifest: an upload still running"):
        choose_backup([partial], "uk8s-x", partial.key)
    with pytest.raises(RestoreRefused, match="is damaged: its size 1 differs from the 9 bytes"):
        choose_backup([truncated], "uk8s-x", truncated.key)
    foreign = backup("2024-01-01T00-00-00", cluster="uk8s-other")
    with pytest.raises(RestoreRefused, match="not a backup of uk8s-x"):
        choose_backup([foreign], "uk8s-x", foreign.key)
    renamed = backup("2024-01-01T00-00-00", mc="uk8s-other")
    with pytest.raises(BackupCorrupt, match="uk8s-other"):
        choose_backup([renamed], "uk8s-x", renamed.key)


# --- the plan ------------------------------------------------------------------------


def test_plan_for_deleted_nodes_refills_them_and_restores_every_member():
    plan = plan_cluster_restore(spec(), deleted(), SNAP, None, "tok-1", OPTIONS)
    assert plan.info["retained"] == "etcd1" and plan.info["wire"] == "zstd"
    assert [p for p, _ in plan.phases()] == [
        "upload",  # first: it touches nothing of etcd's, so it overlaps the last checks
        "stop",
        "refill",
        "configure",
        "set-aside",
        "restore",
        "start",
        "check",
    ]
    assert not any(s.destructive for s in plan.steps if s.phase == "upload")
    assert all(s.undo and s.repeatable for s in plan.steps if s.phase == "upload")
    assert not [s for s in plan.for_node("etcd1") if s.phase == "refill"]
    refill = commands(plan, "etcd2", "refill")
    assert any("/etc/etcd" in cmd and "saved" in cmd for cmd in refill) and "systemctl daemon-reload" in refill
    copied = [a.path for s in plan.for_node("etcd2") if s.phase == "refill" for a in s.actions if hasattr(a, "source")]
    assert copied == [
        "/usr/bin/etcd",
        "/usr/bin/etcdctl",
        "/usr/bin/etcdutl",
        "/etc/etcd",
        "/etc/kubernetes",
        "/usr/lib/systemd/system/etcd.service",
    ]
    initial = ",".join(f"{n}=https://{ip}:2380" for n, ip in IPS.items())
    for name, ip in IPS.items():
        [restore] = commands(plan, name, "restore")
        assert restore.startswith("/usr/bin/etcdutl snapshot restore /var/lib/etcd-restore-20240101T000000Z/")
        assert f"--name={name}" in restore and f"--initial-advertise-peer-urls=https://{ip}:2380" in restore
        assert f"--initial-cluster={initial}" in restore and "--initial-cluster-token=tok-1" in restore
        assert "--data-dir=/var/lib/etcd/default.etcd" in restore and "--bump-revision" not in restore
        assert commands(plan, name, "set-aside") == [
            "mkdir -p /var/lib/etcd-restore-20240101T000000Z && if [ -e /var/lib/etcd ]; then mv /var/lib/etcd "
            "/var/lib/etcd.bak-20240101T000000Z; else : > /var/lib/etcd-restore-20240101T000000Z/no-data-dir; fi && "
            "mkdir -p /var/lib/etcd"
        ]
        assert commands(plan, name, "start") == ["systemctl enable --now etcd"]
        [conf] = [a for s in plan.for_node(name) if s.phase == "configure" for a in s.actions if hasattr(a, "text")]
        assert f"ETCD_NAME={name}\n" in conf.text and f'ETCD_LISTEN_PEER_URLS="https://{ip}:2380"' in conf.text
    assert "systemctl stop etcd" in commands(plan, "etcd1", "stop")
    assert all(
        s.destructive for s in plan.steps if s.phase in ("stop", "refill", "configure", "set-aside", "restore", "start")
    )


def test_plan_on_34_nodes_uses_etcdctl_and_bumps_where_supported():
    plan = plan_cluster_restore(spec(), deleted(version="3.4.23"), SNAP, None, "t", OPTIONS)
    [restore] = commands(plan, "etcd3", "restore")
    assert restore.startswith("ETCDCTL_API=3 /usr/bin/etcdctl snapshot restore") and "--bump-revision" not in restore
    facts = [node_facts(n, version="3.4.27") for n in IPS]
    [restore] = commands(plan_cluster_restore(spec(), facts, SNAP, None, "t", OPTIONS), "etcd2", "restore")
    assert "--bump-revision=1000000000" in restore and "--mark-compacted" in restore


def test_plan_for_failed_members_keeps_their_files_and_restarts_apiservers():
    facts = [
        node_facts("etcd1", active=True, kube_active=("kube-apiserver", "kube-scheduler")),
        node_facts("etcd2"),
        node_facts("etcd3"),
    ]
    plan = plan_cluster_restore(spec(), facts, SNAP, "etcd1", "t", OPTIONS)
    assert not [s for s in plan.steps if s.phase == "refill"]
    apiserver, etcd = [s for s in plan.for_node("etcd1") if s.phase == "stop"]
    assert (apiserver.name, etcd.name) == ("stop kube-apiserver @ etcd1", "stop etcd @ etcd1")
    assert [u.cmd for u in apiserver.undo] == ["systemctl start kube-apiserver"]
    assert etcd.undo[0].cmd.startswith("timeout ") and etcd.repeatable
    assert commands(plan, "etcd1", "kubernetes") == [
        "systemctl start kube-apiserver",
        "systemctl restart kube-scheduler",
    ]
    assert commands(plan, "etcd2", "kubernetes") == []


def test_plan_with_control_plane_runs_the_runbooks_last_step_on_rebuilt_nodes():
    plan = plan_cluster_restore(spec(), deleted(), SNAP, None, "t", RestoreOptions("r", restore_control_plane=True))
    cmds = commands(plan, "etcd3", "kubernetes")
    assert c.set_advertise_address("/etc/kubernetes/apiserver", IPS["etcd3"]) in cmds
    assert "systemctl enable --now kube-apiserver kube-controller-manager kube-scheduler" in cmds
    assert cmds[-1] == "systemctl restart network"
    copied = {
        a.path for s in plan.for_node("etcd3") if s.phase == "kubernetes" for a in s.actions if hasattr(a, "source")
    }
    assert copied == {
        "/usr/local/bin/hyperkube",
        "/usr/local/bin/kubectl",
        "/root/.kube",
        "/usr/lib/systemd/system/kube-apiserver.service",
        "/usr/lib/systemd/system/kube-scheduler.service",
        "/etc/sysconfig/network-scripts/ifcfg-lo:internal",
        "/etc/sysconfig/network-scripts/ifcfg-lo:external",
    }
    assert commands(plan, "etcd1", "kubernetes") == []
    with pytest.raises(RestoreRefused, match="restore_control_plane"):
        plan_cluster_restore(spec(), deleted(kube=False), SNAP, None, "t", RestoreOptions("r", True))


def test_plan_refuses_unreachable_nodes_and_small_disks():
    facts = deleted()
    facts[2] = node_facts("etcd3", reachable=False)
    with pytest.raises(RestoreRefused, match="etcd3.*timed out"):
        plan_cluster_restore(spec(), facts, SNAP, None, "t", OPTIONS)
    facts[2] = node_facts("etcd3", files=False, free=15 << 20)
    with pytest.raises(RestoreRefused, match="free disk"):
        plan_cluster_restore(spec(), facts, SNAP, None, "t", OPTIONS)


def test_plan_refuses_while_a_node_holds_a_run_that_never_finished_and_names_both_ways_out():
    run = "/var/lib/etcd-restore-20231231T000000Z"
    facts = [dataclasses.replace(f, unfinished=(run,)) if f.name != "etcd2" else f for f in deleted()]
    with pytest.raises(RestoreRefused) as refused:
        plan_cluster_restore(spec(), facts, SNAP, None, "t", OPTIONS)
    text = str(refused.value)
    assert text.startswith("[check leftovers] ")
    assert "restore run 20231231T000000Z never finished on etcd1, etcd3" in text
    assert f"`sh {run}/rollback.sh` on etcd1, etcd3" in text and f"`rm {run}/unfinished` on etcd1, etcd3" in text
    assert "/var/lib/etcd.bak-20231231T000000Z" in text  # where the old data dir is kept
    plan_cluster_restore(spec(), deleted(), SNAP, None, "t", OPTIONS)  # without the marker: planned


def test_outcome_tells_an_untouched_cluster_from_a_rollback_and_from_a_node_left_open():
    upload = StepResult("upload snapshot @ etcd3", "etcd3", "upload", "upload snapshot", status="failed")
    stop = StepResult("stop etcd @ etcd1", "etcd1", "stop", "stop etcd", destructive=True, status="undone")
    assert (
        outcome(ExecutionReport(ok=False, results=[upload], rolled_back=True)) == "FAILED before any node was changed"
    )
    assert outcome(ExecutionReport(ok=False, results=[upload, stop], rolled_back=True)) == "FAILED and was rolled back"
    left = ExecutionReport(ok=False, results=[upload, stop], rolled_back=True, unfinished={"etcd3": "/r/rollback.sh"})
    assert (
        outcome(left)
        == "FAILED and was NOT fully rolled back (finish it with `sh /r/rollback.sh` on etcd3 once it answers)"
    )


# --- commands run for real on a scratch tree --------------------------------------------


def sh(cmd: str) -> None:
    subprocess.run(["sh", "-c", cmd], check=True)


def test_save_and_put_back_restore_files_trees_and_data_dirs(tmp_path):
    run, conf, tree, data = (str(tmp_path / p) for p in ("run", "etc/etcd.conf", "etc/kube", "lib/etcd/default.etcd"))
    (tmp_path / "etc/kube").mkdir(parents=True)
    (tmp_path / "etc/etcd.conf").write_text("old")
    (tmp_path / "etc/kube/a").write_text("a")
    (tmp_path / "lib/etcd/default.etcd/member").mkdir(parents=True)
    for cmd in (c.save(conf, run), c.save(conf, run), c.save(tree, run), c.save(str(tmp_path / "new"), run)):
        sh(cmd)
    (tmp_path / "etc/etcd.conf").write_text("new")
    (tmp_path / "etc/kube/b").write_text("b")
    (tmp_path / "new").write_text("created")
    sh(c.set_aside(data, "r1"))
    assert (tmp_path / "lib/etcd.bak-r1/default.etcd/member").is_dir() and not any((tmp_path / "lib/etcd").iterdir())
    (tmp_path / "lib/etcd/default.etcd").mkdir()
    for cmd in (
        c.put_back_data(data, "r1"),
        c.put_back_file(conf, run),
        c.put_back_tree(tree, run),
        c.put_back_file(str(tmp_path / "new"), run),
    ):
        sh(cmd)
    assert (tmp_path / "etc/etcd.conf").read_text() == "old"
    assert sorted(p.name for p in (tmp_path / "etc/kube").iterdir()) == ["a"]
    assert not (tmp_path / "new").exists() and (tmp_path / "run/undone" / str(tmp_path / "new")[1:]).exists()
    assert (tmp_path / "lib/etcd/default.etcd/member").is_dir() and not (tmp_path / "lib/etcd.bak-r1").exists()


@pytest.mark.parametrize(
    "before,after",
    [
        (  # every flag on one line: the runbook's `.*` sed dropped --b=2
            'KUBE_APISERVER_OPTS="--a=1 --advertise-address=10.0.0.1 --b=2 --v=2"\n',
            'KUBE_APISERVER_OPTS="--a=1 --advertise-address=10.9.9.9 --b=2 --v=2"\n',
        ),
        (  # one flag per line
            'KUBE_APISERVER_OPTS="--a=1 \\\n  --advertise-address=10.0.0.1 \\\n  --b=2"\n',
            'KUBE_APISERVER_OPTS="--a=1 \\\n  --advertise-address=10.9.9.9 \\\n  --b=2"\n',
        ),
        ('OPTS="--advertise-address=10.0.0.1"\n', 'OPTS="--advertise-address=10.9.9.9"\n'),  # last before the quote
    ],
)
def test_advertise_address_replaces_only_the_address(tmp_path, before, after):
    conf = tmp_path / "apiserver"
    conf.write_text(before)
    sh(c.set_advertise_address(str(conf), "10.9.9.9"))
    assert conf.read_text() == after
    sh(c.set_advertise_address(str(conf), "10.9.9.9"))  # repeatable
    assert conf.read_text() == after


def test_put_back_data_is_repeatable_and_undoes_a_data_dir_that_did_not_exist(tmp_path):
    data = str(tmp_path / "lib/etcd/default.etcd")
    (tmp_path / "lib").mkdir()
    sh(c.set_aside(data, "r2"))  # a bare node: nothing to move aside
    (tmp_path / "lib/etcd/default.etcd/member").mkdir(parents=True)
    for _ in range(2):
        sh(c.put_back_data(data, "r2"))
        assert sorted(p.name for p in (tmp_path / "lib").iterdir()) == ["etcd-restore-r2"]
    assert (tmp_path / "lib/etcd-restore-r2/restored-data/default.etcd/member").is_dir()


# --- the step runner: journal and undo order ------------------------------------------


class FakeNode:
    def __init__(self, name, log, fail_on=None):
        self.name, self.log, self.fail_on = name, log, fail_on

    def run(self, cmd, timeout=0):
        self.log.append((self.name, cmd))
        if cmd == self.fail_on:
            raise NodeError("exited 1", step="run", node=self.name)


def test_runner_journals_each_step_and_the_undo_order_is_newest_first_per_phase(tmp_path):
    log: list = []
    nodes = {"a": FakeNode("a", log), "b": FakeNode("b", log, fail_on="restore b")}
    runner = Runner(nodes, Journal(tmp_path / "run.jsonl"))
    steps = [
        *(Step(n, "stop", "stop", (Run(f"stop {n}"),), True, (Run(f"start {n}"),)) for n in "ab"),
        *(Step(n, "set-aside", "aside", (Run(f"aside {n}"),), True, (Run(f"back {n}"),)) for n in "ab"),
        Step("a", "restore", "restore", (Run("restore a"),), True),
        Step("b", "restore", "restore", (Run("restore b"),), True),
        Step("a", "remove", "remove", (Run("remove a"),), True, irreversible=True),
    ]
    for step in steps[:5]:
        runner.run(step)
    with pytest.raises(NodeError, match="exited 1"):
        runner.run(steps[5])
    started = runner.journal.started(steps)
    assert started == steps[:6] and runner.journal.failures(steps) == ["[restore @ b] [run on b] exited 1"]
    groups = undo_order(started + [steps[6]])
    assert [[s.name for s in g] for g in groups] == [["aside @ b", "aside @ a"], ["stop @ b", "stop @ a"]]
    for group in groups:
        for step in group:
            runner.undo(step)
    report = runner.journal.report("[restore @ b] exited 1", rolled_back=True)
    statuses = {r.name: r.status for r in report.results}
    assert statuses["restore @ b"] == "failed" and statuses["stop @ a"] == "undone"
    assert statuses["restore @ a"] == "done"  # its effect goes with the set-aside undo
    lines = (tmp_path / "run.jsonl").read_text().splitlines()
    assert len(lines) == 6 * 2 + 4 and '"event": "undo"' in lines[-1]


# --- the snapshot feed: one compressed stream for every node, a retry reads its own --------------------------


def _read_all(reader, size=1 << 16) -> bytes:
    out = bytearray()
    while chunk := reader.read(size):
        out += chunk
    return bytes(out)


def test_snapshot_feed_shares_one_stream_and_a_retry_reads_its_own(tmp_path):
    import threading

    from etcd_backup.restore.feed import SnapshotFeed

    snapshot = tmp_path / "snapshot.db"
    data = os.urandom(3 << 20).hex().encode()[: 5 << 20] + bytes(1 << 20)
    snapshot.write_bytes(data)
    feed = SnapshotFeed(str(snapshot), "zstd", ["a", "b", "c"], join_wait=5)
    readers = {name: feed.open(name) for name in "abc"}
    got: dict[str, bytes] = {}

    def consume(name):
        if name == "c":  # a node whose upload breaks after 1 MiB leaves the shared stream
            readers[name].read(1 << 20)
            readers[name].close()
        else:
            got[name] = _read_all(readers[name])

    threads = [threading.Thread(target=consume, args=(name,)) for name in "abc"]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert not any(t.is_alive() for t in threads)
    again = _read_all(feed.open("c"))  # its retry: a stream of its own
    for wire in (got["a"], got["b"], again):
        decoded = subprocess.run(["zstd", "-dqc"], input=wire, capture_output=True, check=True).stdout
        assert decoded == data
    assert len(got["a"]) < len(data) * 0.7
    damaged = bytearray(again)
    damaged[len(damaged) // 2] ^= 0x01  # zstd's content checksum catches a damaged copy on the node
    assert subprocess.run(["zstd", "-dqc"], input=bytes(damaged), capture_output=True).returncode != 0
