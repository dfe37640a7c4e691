"""Pure diagnosis: which of the runbook's four restore cases applies, and which flow to run with which parameters."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from etcd_backup import flow_names, recovery
from etcd_backup.cluster import ClusterSpec, MasterNode
from etcd_backup.errors import RestoreRefused
from etcd_backup.etcd import MemberInfo
from etcd_backup.restore.facts import RestoreFacts
from etcd_backup.restore.member import check_cluster

HEALTHY = "healthy"
MEMBER_FAILED = "3.1.1"  # one (less than half) member failed, node not deleted, quorum kept
NODE_DELETED = "3.2.1"  # one (less than half) node deleted and recreated bare, quorum kept
QUORUM_LOST_FAILED = "3.1.2"  # half or more failed, quorum lost
QUORUM_LOST_DELETED = "3.2.2"  # half or more nodes deleted, quorum lost
MANUAL = "manual"  # no reachable node holds the etcd files: cannot recover automatically

TITLES = {
    HEALTHY: "healthy: every member answers, nothing to restore",
    MEMBER_FAILED: "3.1.1 a member failed, its node was not deleted, the cluster keeps quorum",
    NODE_DELETED: "3.2.1 a member's node was deleted (bare machine), the cluster keeps quorum",
    QUORUM_LOST_FAILED: "3.1.2 half or more members failed, the cluster lost quorum",
    QUORUM_LOST_DELETED: "3.2.2 half or more nodes were deleted, the cluster lost quorum",
    MANUAL: "cannot recover automatically: no node reachable over SSH holds the etcd files to start from",
}
RESTORE_MEMBER = flow_names.RESTORE_MEMBER
RESTORE_CLUSTER = flow_names.RESTORE_CLUSTER
LOW_FREE_BYTES = 1 << 30

# Node states.
OK, NO_QUORUM, FAILED, BARE, UNREACHABLE = "healthy", "no quorum", "failed", "bare", "unreachable"
_CORE_FILES = ("etcd_bin", "etcd_conf", "certs", "unit")


@dataclass(frozen=True)
class NodeFinding:
    """What the diagnosis found about one node of the spec."""

    name: str
    ip: str
    state: str
    health: str
    is_member: bool | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Action:
    """One flow run to do: its flow name, parameters, and whether it can run now."""

    flow: str
    parameters: dict[str, str]
    ready: bool = True
    note: str = ""


@dataclass(frozen=True)
class Diagnosis:
    """The case that applies, the flow runs that fix it, per-node findings and a human summary."""

    case: str
    title: str
    quorum: bool
    summary: str
    nodes: tuple[NodeFinding, ...]
    actions: tuple[Action, ...] = ()
    findings: tuple[str, ...] = field(default=())

    @property
    def flow(self) -> str | None:
        """The flow to run first, or None when there is nothing to run."""
        return self.actions[0].flow if self.actions else None

    @property
    def parameters(self) -> dict[str, str]:
        """The parameters of the first flow run."""
        return dict(self.actions[0].parameters) if self.actions else {}

    def to_dict(self) -> dict:
        """Plain data (lists and dicts) for a flow result."""
        data = asdict(self)
        data.update(flow=self.flow, parameters=self.parameters)
        return data


def diagnose(
    spec: ClusterSpec, facts: list[RestoreFacts], health: dict[str, str], members: list[MemberInfo] | None
) -> Diagnosis:
    """Decide which runbook case applies from node facts, endpoint health and the member list.

    Quorum, the health of each node and the source of files follow etcd_backup.recovery,
    and a member replacement is only marked ready when the flow's own checks accept it.
    """
    by_name = {f.name: f for f in facts}
    states = recovery.node_health(spec, health)
    quorum = recovery.has_quorum(spec, health, len(members) if members else None)
    findings = tuple(_finding(spec, n, by_name.get(n.name), states[n.name], members, quorum) for n in spec.nodes)
    extra = _members_not_in_spec(spec, members)
    notes = tuple(f"member {m} is in the member list but not in the cluster block" for m in extra)
    if members is None:
        notes += ("the member list could not be read",)
    if quorum:
        case, actions, why = _quorum_kept(spec, findings, facts, health, members)
    else:
        case, actions, why = _quorum_lost(spec, findings, facts)
    return Diagnosis(
        case=case,
        title=TITLES[case],
        quorum=quorum,
        nodes=findings,
        actions=actions,
        findings=notes + why,
        summary=_summary(case, quorum, findings, actions, notes + why),
    )


def _finding(
    spec: ClusterSpec,
    node: MasterNode,
    found: RestoreFacts | None,
    health: str,
    members: list[MemberInfo] | None,
    quorum: bool,
) -> NodeFinding:
    """One node's state (healthy, no quorum, failed, bare, unreachable) with notes a person can act on."""
    facts = found.node if found else None
    is_member = None if members is None else any(_is(spec, node, m) for m in members)
    notes = []
    if facts is None or not facts.reachable:
        notes.append(f"SSH failed: {facts.error if facts else 'not checked'}")
        if facts and facts.error and "host key" in facts.error:
            notes.append("if the machine was recreated, put its new host key in the cluster block's known_hosts")
    elif facts.missing:
        notes.append("missing: " + ", ".join(facts.missing))
    if facts and facts.reachable and facts.free_bytes is not None and facts.free_bytes < LOW_FREE_BYTES:
        notes.append(f"only {facts.free_bytes >> 20} MiB free under the data dir")
    if facts and facts.reachable and facts.etcd_active and health != "ok":
        notes.append("etcd runs but does not answer health checks" + ("" if quorum else " (no quorum)"))
    if is_member is False:
        notes.append("not in the etcd member list")
    state = _state(facts, health)
    if state == FAILED and facts is not None and facts.etcd_active and not quorum:
        state = NO_QUORUM
    return NodeFinding(name=node.name, ip=node.ip, state=state, health=health, is_member=is_member, notes=tuple(notes))


def _state(facts, health: str) -> str:
    if health == "ok":
        return OK
    if facts is None or not facts.reachable:
        return UNREACHABLE
    if all(not facts.files.get(k) for k in _CORE_FILES) and not facts.data_dir_present:
        return BARE
    return FAILED


def _is(spec: ClusterSpec, node: MasterNode, member: MemberInfo) -> bool:
    """True when the member is this node (by name, or by peer URL for a member not started yet)."""
    return member.name == node.name or spec.peer_url(node) in member.peer_urls


def _members_not_in_spec(spec: ClusterSpec, members: list[MemberInfo] | None) -> list[str]:
    """Members (as 'name id peer-urls') that match no node of the spec."""
    return [
        f"{m.name or '(unstarted)'} {m.hex_id} {','.join(m.peer_urls)}"
        for m in members or []
        if not any(_is(spec, n, m) for n in spec.nodes)
    ]


def _sources(reasons: dict[str, str]) -> tuple[str, ...]:
    return tuple(f"{name} cannot be the source of etcd files: {why}" for name, why in reasons.items())


def _quorum_kept(
    spec: ClusterSpec,
    findings: tuple[NodeFinding, ...],
    facts: list[RestoreFacts],
    health: dict[str, str],
    members: list[MemberInfo] | None,
) -> tuple[str, tuple[Action, ...], tuple[str, ...]]:
    """Cases 3.1.1 / 3.2.1: replace each broken member from a healthy node that holds every file."""
    broken = [f for f in findings if f.state != OK]
    if not broken:
        return HEALTHY, (), ()
    healthy = {f.name: f.state == OK for f in findings}
    source, reasons = recovery.choose_source(facts, exclude=tuple(f.name for f in broken), healthy=healthy)
    if source is None:
        return MANUAL, (), _sources(reasons)
    case = NODE_DELETED if all(f.state in (BARE, UNREACHABLE) for f in broken) else MEMBER_FAILED
    actions = []
    for f in broken:
        note = _blocked(f) or _member_refusal(spec, f.name, members, health)
        params = {"failed_node": f.name, "healthy_node": source.name}
        actions.append(Action(RESTORE_MEMBER, params, ready=not note, note=note))
    return case, tuple(actions), ()


def _member_refusal(spec: ClusterSpec, name: str, members: list[MemberInfo] | None, health: dict[str, str]) -> str:
    """Why the member replacement flow would refuse this node now ('' when it would go ahead)."""
    if members is None:
        return "the member list could not be read; check the cluster block's endpoints and certificates"
    try:
        check_cluster(spec, spec.node(name), members, health)
    except RestoreRefused as exc:
        return exc.message
    return ""


def _quorum_lost(
    spec: ClusterSpec, findings: tuple[NodeFinding, ...], facts: list[RestoreFacts]
) -> tuple[str, tuple[Action, ...], tuple[str, ...]]:
    """Cases 3.1.2 / 3.2.2: rebuild the whole cluster from a backup, keeping the best eligible node."""
    keep, reasons = recovery.choose_source(facts)
    if keep is None:
        return MANUAL, (), _sources(reasons)
    deleted = [f for f in findings if f.state in (BARE, UNREACHABLE)]
    case = QUORUM_LOST_DELETED if 2 * len(deleted) >= len(spec.nodes) else QUORUM_LOST_FAILED
    blocked = [f for f in findings if f.state == UNREACHABLE]
    note = "; ".join(_blocked(f) for f in blocked)
    passed_over = {f.name: reasons[f.name] for f in findings if f.name in reasons and f not in deleted}
    return (
        case,
        (Action(RESTORE_CLUSTER, {"retained_node": keep.name, "backup": "latest"}, ready=not blocked, note=note),),
        _sources(passed_over),
    )


def _blocked(f: NodeFinding) -> str:
    if f.state != UNREACHABLE:
        return ""
    return (
        f"{f.name} ({f.ip}) cannot be reached over SSH: recreate the machine with the same IP "
        "and put its new host key in the cluster block's known_hosts"
    )


def _summary(
    case: str, quorum: bool, findings: tuple[NodeFinding, ...], actions: tuple[Action, ...], notes: tuple[str, ...]
) -> str:
    """Two or three plain sentences for a person."""
    states = ", ".join(f"{f.name} {f.state}" for f in findings)
    text = f"{TITLES[case]}. Quorum {'kept' if quorum else 'lost'}; nodes: {states}."
    for a in actions:
        params = " ".join(f"{k}={v}" for k, v in a.parameters.items())
        text += f" Run {a.flow} with {params}" + ("." if a.ready else f"; first: {a.note}.")
    if case == MANUAL:
        text += " Log in to a master and recover the etcd files by hand (runbook 3.1.2/3.2.2: contact support)."
    for n in notes:
        text += f" Note: {n}."
    return text
