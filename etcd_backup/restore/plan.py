"""Pure planning of a whole-cluster restore (quorum lost): checks that refuse, and the ordered per-node steps.

Phases run in this order; within a phase every node works in parallel, each node's
steps in order. Services stop before any file changes so that a rollback (the undos in
reverse) puts files and data back before it starts etcd again where it ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from etcd_backup.cluster import ClusterSpec
from etcd_backup.errors import RestoreRefused
from etcd_backup.pipeline import VerifyResult
from etcd_backup.restore import commands as c
from etcd_backup.restore import steps
from etcd_backup.restore.actions import CLUSTER, Check, Step
from etcd_backup.restore.conf import rewrite_conf
from etcd_backup.restore.facts import RestoreFacts

PHASES = ("stop", "refill", "configure", "set-aside", "upload", "restore", "start", "check", "kubernetes")
HEADROOM = 128 << 20  # free bytes wanted on top of the snapshot copy and the restored data dir


@dataclass(frozen=True)
class RestoreOptions:
    """Choices of one restore run: its id (a UTC timestamp) and whether to bring back the Kubernetes control plane."""

    run_id: str
    restore_control_plane: bool = False


@dataclass(frozen=True)
class RestorePlan:
    """Every step of a restore, in order, with the facts it was made from."""

    cluster_id: str
    retained: str
    token: str
    run_id: str
    snapshot: VerifyResult
    nodes: tuple[str, ...]
    steps: tuple[Step, ...]
    notes: tuple[str, ...] = ()
    tools: dict[str, str] = field(default_factory=dict)

    def phases(self) -> list[tuple[str, list[Step]]]:
        """(phase, its steps) in execution order, empty phases left out."""
        return [(p, [s for s in self.steps if s.phase == p]) for p in PHASES if any(s.phase == p for s in self.steps)]

    def for_node(self, name: str) -> list[Step]:
        """The steps of one node, in order."""
        return [s for s in self.steps if s.node == name]


def quorum_healthy(health: dict[str, str], members: int) -> bool:
    """True when more than half of the members answer a linearizable read."""
    return sum(1 for state in health.values() if state == "ok") > members // 2


def refuse_if_quorum(health: dict[str, str], members: int, force: bool) -> None:
    """Refuse a whole-cluster restore while quorum holds (replace members instead), unless forced."""
    if quorum_healthy(health, members) and not force:
        ok = sorted(e for e, s in health.items() if s == "ok")
        raise RestoreRefused(
            f"quorum is healthy ({len(ok)} of {members} members answer: {', '.join(ok)}); "
            "replace the failed members with the flow etcd-restore-member instead, or pass "
            "force=True to restore the whole cluster from a backup anyway",
            step="check quorum",
        )


def choose_retained(facts: list[RestoreFacts], wanted: str | None = None) -> RestoreFacts:
    """The node to copy files from: the given one, or the reachable node with every file (Kubernetes ones too, best)."""
    if wanted:
        f = next((f for f in facts if wanted in (f.name, f.node.ip)), None)
        if f is None:
            raise RestoreRefused(f"retained node {wanted!r} is not a node of the cluster", step="choose retained")
        if not f.node.reachable or f.missing:
            why = f.node.error if not f.node.reachable else "it lacks " + ", ".join(f.missing)
            raise RestoreRefused(f"cannot copy files from {f.name}: {why}", step="choose retained", node=f.name)
        return f
    full = [f for f in facts if f.node.reachable and not f.missing]
    if not full:
        raise RestoreRefused(
            "no reachable node still has the etcd binaries, /etc/etcd, /etc/kubernetes and the "
            "unit; restore those files on one node by hand first",
            step="choose retained",
        )
    return max(full, key=lambda f: (f.has_control_plane, f.node.etcd_active, f.node.data_dir_present))


def check_nodes(facts: list[RestoreFacts], snapshot: VerifyResult) -> None:
    """Refuse when a node is unreachable or lacks the disk for the snapshot and its restored copy."""
    down = [f"{f.name} ({f.node.ip}): {f.node.error}" for f in facts if not f.node.reachable]
    if down:
        raise RestoreRefused(
            "every node must be reachable with a verified host key; not reachable: " + "; ".join(down),
            step="check nodes",
        )
    need = 2 * snapshot.raw_size + HEADROOM
    short = [
        f"{f.name} has {f.node.free_bytes} bytes free"
        for f in facts
        if f.node.free_bytes is not None and f.node.free_bytes < need
    ]
    if short:
        raise RestoreRefused(f"not enough free disk (need {need} bytes): " + "; ".join(short), step="check disk")


def _tool(f: RestoreFacts, retained: RestoreFacts, spec: ClusterSpec) -> tuple[str, str, bool]:
    """(tool name, its path, bump supported) of the node once refilled."""
    own = f.node.files.get("etcd_bin")
    version = c.parse_version(f.node.etcd_version if own else retained.node.etcd_version)
    if version is None:
        raise RestoreRefused("cannot tell the etcd version of the node", step="check versions", node=f.name)
    has_etcdutl = f.node.files.get("etcdutl_bin") or (not own and retained.node.files.get("etcdutl_bin"))
    tool = c.restore_tool(version, bool(has_etcdutl))
    if tool is None:
        raise RestoreRefused(
            f"etcd {'.'.join(map(str, version))} needs etcdutl, which the node lacks",
            step="check versions",
            node=f.name,
        )
    path = spec.layout.etcdutl_bin if tool == "etcdutl" else spec.layout.etcdctl_bin
    return tool, path, c.supports_bump(version)


def _conf(f: RestoreFacts, retained: RestoreFacts, spec: ClusterSpec, token: str) -> str:
    """The member's new etcd.conf, from its own config when it kept it, else from the retained node's."""
    source = f if f.node.files.get("etcd_conf") and f.conf_text else retained
    if not source.conf_text:
        raise RestoreRefused("cannot read etcd.conf", step="check nodes", node=source.name)
    member = spec.node(f.name)
    return rewrite_conf(
        source.conf_text,
        name=f.name,
        source_ip=spec.node(source.name).ip,
        node_ip=member.ip,
        initial_cluster=spec.initial_cluster(),
        token=token,
    )


def plan_cluster_restore(
    spec: ClusterSpec,
    facts: list[RestoreFacts],
    snapshot: VerifyResult,
    retained: str | None,
    token: str,
    options: RestoreOptions,
) -> RestorePlan:
    """The ordered steps that restore every member of the cluster from one snapshot (runbook 3.1.2 / 3.2.2)."""
    check_nodes(facts, snapshot)
    keep = choose_retained(facts, retained)
    if options.restore_control_plane and not keep.has_control_plane:
        raise RestoreRefused(
            "restore_control_plane needs hyperkube, kubectl, ~/.kube, the apiserver config and "
            "kube-* units on the retained node",
            step="choose retained",
            node=keep.name,
        )
    layout, run_id = spec.layout, options.run_id
    run = c.run_dir(layout.data_dir, run_id)
    tools = {f.name: _tool(f, keep, spec) for f in facts}
    plan: list[Step | None] = []
    for f in facts:
        plan.append(steps.stop(f, layout))
        if f is not keep:
            plan.append(steps.refill(f, keep, layout, run))
        plan.append(steps.configure(f.name, layout.etcd_conf, _conf(f, keep, spec, token), run))
        plan.append(steps.set_aside(f.name, layout, run_id))
        plan.append(steps.upload(f.name, run, snapshot.raw_sha256))
        tool, path, bump = tools[f.name]
        member = spec.node(f.name)
        plan.append(
            steps.restore(
                f.name,
                c.restore_snapshot(
                    path,
                    tool,
                    f"{run}/{steps.SNAPSHOT_NAME}",
                    name=f.name,
                    peer_url=spec.peer_url(member),
                    initial_cluster=spec.initial_cluster(),
                    token=token,
                    data_dir=layout.data_dir,
                    bump=bump,
                ),
            )
        )
        plan.append(steps.start(f))
        plan += _kubernetes(f, keep, spec, run, options)
    plan.append(
        Step(
            CLUSTER,
            "check",
            "every member healthy, member list right, data counted",
            (Check("healthy"), Check("members"), Check("data")),
        )
    )
    ordered = tuple(s for s in plan if s is not None)
    return RestorePlan(
        cluster_id=spec.cluster_id,
        retained=keep.name,
        token=token,
        run_id=run_id,
        snapshot=snapshot,
        nodes=tuple(f.name for f in facts),
        steps=_by_phase(ordered),
        notes=_notes(facts, keep, tools, run, layout, run_id),
        tools={n: t[0] + (" --bump-revision" if t[2] else "") for n, t in tools.items()},
    )


def _kubernetes(f: RestoreFacts, keep: RestoreFacts, spec: ClusterSpec, run: str, options: RestoreOptions) -> list:
    if options.restore_control_plane and f is not keep:
        return steps.control_plane(f, keep, spec.node(f.name).ip, spec.layout, run)
    return [steps.restart_kube(f)] if "kube-apiserver" in f.kube_active else []


def _by_phase(ordered: tuple[Step, ...]) -> tuple[Step, ...]:
    """Steps sorted by phase (stable: each node keeps its own order)."""
    return tuple(sorted(ordered, key=lambda s: PHASES.index(s.phase)))


def _notes(facts, keep, tools, run, layout, run_id) -> tuple[str, ...]:
    notes = [
        f"files are copied from the retained node {keep.name}",
        f"old data dirs are moved to {c.aside_dir(layout.data_dir, run_id)} on every node; copies of every "
        f"file changed are kept under {run}/saved",
        "if any step fails, every completed step is undone in reverse order (data dirs and files put back, "
        "etcd started again where it ran)",
    ]
    if any(not bump for _, _, bump in tools.values()):
        notes.append(
            "--bump-revision/--mark-compacted are not used where the node's etcd lacks them "
            "(3.5.10+, 3.4.27+): Kubernetes watchers may need a restart of the apiservers"
        )
    return tuple(notes)
