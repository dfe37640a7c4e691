"""Pure planning of a member replacement (quorum kept; runbook 3.1.1 and 3.2.1): checks that refuse, ordered steps.

Everything undoable comes first (stop etcd on the failed node, copy the files from a
healthy node, write etcd.conf, set the old data dir aside); the membership changes
(`member remove`, `member add`) and the start come last. `member remove` cannot be
undone: a rollback after it puts the node's files and data back and reports that the
member is out of the cluster, so that running the flow again only adds it.
Membership changes run `etcdctl member remove/add` on the healthy node with the
runbook's ETCDCTL_* environment, so the plan shows the very commands of the runbook.
"""

from __future__ import annotations

import shlex

from etcd_backup import flow_names, recovery
from etcd_backup.cluster import ClusterSpec, MasterNode
from etcd_backup.discover import parse_env_file
from etcd_backup.errors import ConfigError, RestoreRefused
from etcd_backup.etcd import MemberInfo
from etcd_backup.restore import commands as c
from etcd_backup.restore import steps
from etcd_backup.restore.actions import Run, Step
from etcd_backup.restore.conf import rewrite_conf
from etcd_backup.restore.facts import RestoreFacts
from etcd_backup.restore.leftovers import refuse_unfinished
from etcd_backup.restore.plan import Plan, RestoreOptions, order

PHASES = ("stop", "refill", "configure", "set-aside", "remove", "add", "start", "check", "kubernetes")
TRIES = 30  # membership changes are retried every 2 s while etcd gives one of these answers:
TRANSIENT = ("unhealthy cluster", "request timed out", "leader changed", "no leader")
KIND = "member replacement"


def failed_member(spec: ClusterSpec, node: MasterNode, members: list[MemberInfo]) -> MemberInfo | None:
    """The member of the failed node, matched by name or peer URL; None when it is no longer a member."""
    peer = spec.peer_url(node)
    found = {m.id: m for m in members if m.name == node.name or peer in m.peer_urls}
    if len(found) > 1:
        listed = ", ".join(f"{m.hex_id} ({m.name or 'unstarted'} {','.join(m.peer_urls)})" for m in found.values())
        raise RestoreRefused(
            f"more than one member matches {node.name} or {peer}: {listed}; remove the wrong one by hand first",
            step="check members",
            node=node.name,
        )
    return next(iter(found.values()), None)


def check_cluster(
    spec: ClusterSpec, node: MasterNode, members: list[MemberInfo] | None, health: dict[str, str]
) -> list[MemberInfo]:
    """Refuse unless quorum holds, the node has failed and the others keep quorum once it is re-added; the others."""
    states = recovery.node_health(spec, health)
    count = len(members) if members else len(spec.nodes)
    if members is None or not recovery.has_quorum(spec, health, count):
        ok = recovery.healthy_nodes(spec, health)
        raise RestoreRefused(
            f"quorum is lost ({len(ok)} of {count} members answer{': ' if ok else ''}"
            f"{', '.join(ok)}); members cannot be replaced: restore the whole cluster from a "
            f"backup with the flow {flow_names.RESTORE_CLUSTER}",
            step="check quorum",
        )
    if states[node.name] == recovery.OK:
        raise RestoreRefused(
            f"{node.name} answers health checks: its member has not failed; nothing to replace",
            step="check quorum",
            node=node.name,
        )
    gone = failed_member(spec, node, members)
    others = [m for m in members if gone is None or m.id != gone.id]
    by_name = {n.name: n for n in spec.nodes}
    for m in others:
        known = by_name.get(m.name)
        if known is None or spec.peer_url(known) not in m.peer_urls:
            raise RestoreRefused(
                f"member {m.hex_id} ({m.name or 'unstarted'}, {','.join(m.peer_urls)}) is not a "
                "node of the cluster block; fix the member list or the block first",
                step="check members",
            )
    healthy = sum(1 for m in others if states[m.name] == recovery.OK)
    if healthy <= (len(others) + 1) // 2:
        raise RestoreRefused(
            f"only {healthy} of the other {len(others)} members are healthy: adding {node.name} "
            f"back would leave no quorum while it starts; use {flow_names.RESTORE_CLUSTER}",
            step="check quorum",
            node=node.name,
        )
    return others


def choose_healthy(
    spec: ClusterSpec,
    facts: list[RestoreFacts],
    health: dict[str, str],
    failed: str,
    wanted: str | None,
    control_plane: bool,
) -> RestoreFacts:
    """The node to copy files from and run etcdctl on: the given one, or the best healthy one (recovery rule)."""
    healthy = {name: state == recovery.OK for name, state in recovery.node_health(spec, health).items()}
    chosen, reasons = recovery.choose_source(
        facts, wanted=wanted, exclude=(failed,), healthy=healthy, control_plane=control_plane
    )
    if chosen is not None:
        return chosen
    if wanted:
        known = next((f for f in facts if wanted in (f.name, f.node.ip) and f.name != failed), None)
        if known is None:
            raise RestoreRefused(f"healthy node {wanted!r} is not another node of the cluster", step="choose healthy")
        raise RestoreRefused(
            f"cannot use {known.name} as the healthy node: {reasons[known.name]}",
            step="choose healthy",
            node=known.name,
        )
    raise RestoreRefused(
        "no healthy node to copy files from: " + "; ".join(f"{n}: {why}" for n, why in reasons.items()),
        step="choose healthy",
    )


def etcdctl(spec: ClusterSpec, endpoints: list[str], args: str) -> str:
    """An etcdctl command with the runbook's ETCDCTL_* environment."""
    env = spec.layout.etcdctl_env(endpoints)
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + f" {c.q(spec.layout.etcdctl_bin)} {args}"


def retrying(command: str, tries: int = TRIES, done_if: str | None = None) -> str:
    """Run a membership command, retrying while etcd is electing a leader or calls the cluster unhealthy.

    `done_if` is an answer that means the change already happened (a retried `member remove`).
    """
    done = f'*"{done_if}"*) echo "$out"; exit 0;; ' if done_if else ""
    again = "|".join(f'*"{t}"*' for t in TRANSIENT)
    return (
        f'(i=0; while :; do out=$({command} 2>&1) && {{ echo "$out"; exit 0; }}; i=$((i+1)); '
        f'case "$out" in {done}{again}) [ $i -lt {tries} ] || break; sleep 2;; *) break;; esac; done; '
        f'echo "$out" >&2; exit 1)'
    )


def remove_by_peer(spec: ClusterSpec, endpoints: list[str], peer_url: str) -> str:
    """Undo of `member add`: remove the member with this peer URL, if there is one."""
    listing = etcdctl(spec, endpoints, "member list")
    remove = etcdctl(spec, endpoints, 'member remove "$id"')
    return f"id=$({listing} | awk -F', ' '$4 == \"{peer_url}\" {{print $1}}'); if [ -n \"$id\" ]; then {remove}; fi"


def membership(
    spec: ClusterSpec, node: MasterNode, healthy: str, gone: MemberInfo | None, endpoints: list[str]
) -> list[Step]:
    """`member remove <id>` (when still a member) and `member add <name> --peer-urls=<url>` on the healthy node."""
    peer = spec.peer_url(node)
    out = []
    if gone is not None:
        remove = etcdctl(spec, endpoints, f"member remove {gone.hex_id}")
        out.append(
            Step(
                healthy,
                "remove",
                f"member remove {gone.hex_id} ({node.name})",
                (Run(retrying(remove, done_if="member not found"), timeout=120),),
                destructive=True,
                note=f"{node.name} was removed from the member list and is NOT a member now; its files and data "
                f"dir were put back. Fix the cause, then run {flow_names.RESTORE_MEMBER} again with "
                f"failed_node={node.name}: it will only add it",
                repeatable=True,
                irreversible=True,
            )
        )
    add = etcdctl(spec, endpoints, f"member add {shlex.quote(node.name)} --peer-urls={peer}")
    out.append(
        Step(
            healthy,
            "add",
            f"member add {node.name}",
            (Run(retrying(add), timeout=120),),
            destructive=True,
            undo=(Run(remove_by_peer(spec, endpoints, peer)),),
        )
    )
    return out


def stop_etcd(f: RestoreFacts) -> list[Step]:
    """Stop etcd on the failed node (so its binary can be replaced); undo starts it again if it ran."""
    return [s for s in steps.stop(f) if s.title == "stop etcd"]


def refill(f: RestoreFacts, source: RestoreFacts, spec: ClusterSpec, run: str, control_plane: bool) -> list[Step]:
    """Runbook step 3: etcd, etcdctl (etcdutl too where the source has it), /etc/etcd, /etc/kubernetes, the unit."""
    layout = spec.layout
    out = [
        steps.copy(f.name, "refill", source.name, layout.etcd_bin, run, binary=True),
        steps.copy(f.name, "refill", source.name, layout.etcdctl_bin, run, binary=True),
    ]
    if source.node.files.get("etcdutl_bin"):
        out.append(steps.copy(f.name, "refill", source.name, layout.etcdutl_bin, run, binary=True))
    out += [
        steps.copy(f.name, "refill", source.name, layout.etcd_conf_dir, run, tree=True),
        steps.copy(f.name, "refill", source.name, layout.kubernetes_dir, run, tree=True),
        steps.copy(f.name, "refill", source.name, layout.unit, run),
    ]
    if source.files.get("apiserver_conf") and not control_plane:  # the copy names the source's IP
        out.append(steps.advertise_address(f.name, "refill", layout, spec.node(f.name).ip, run))
    return out


def member_conf(source: RestoreFacts, spec: ClusterSpec, node: MasterNode, initial_cluster: str) -> str:
    """Runbook step 4: the source's etcd.conf with this member's name and IP, state "existing", the member list."""
    token = parse_env_file(source.conf_text or "").get("ETCD_INITIAL_CLUSTER_TOKEN", "etcd-cluster")
    return rewrite_conf(
        source.conf_text or "",
        name=node.name,
        source_ip=spec.node(source.name).ip,
        node_ip=node.ip,
        initial_cluster=initial_cluster,
        token=token,
        state="existing",
    )


def initial_cluster(spec: ClusterSpec, node: MasterNode, others: list[MemberInfo]) -> str:
    """ETCD_INITIAL_CLUSTER as `member add` prints it: the other members and the new one, in the block's order."""
    rank = {n.name: i for i, n in enumerate(spec.nodes)}
    entries = [(m.name, u) for m in others for u in m.peer_urls] + [(node.name, spec.peer_url(node))]
    return ",".join(f"{name}={url}" for name, url in sorted(entries, key=lambda e: rank.get(e[0], len(rank))))


def plan_member_replacement(
    spec: ClusterSpec,
    facts: list[RestoreFacts],
    members: list[MemberInfo] | None,
    health: dict[str, str],
    failed: str,
    healthy: str | None,
    options: RestoreOptions,
) -> Plan:
    """The ordered steps that replace the failed node's member while quorum holds (runbook 3.1.1 / 3.2.1)."""
    node = _failed_node(spec, failed)
    others = check_cluster(spec, node, members, health)
    gone = failed_member(spec, node, members or [])
    f = next(x for x in facts if x.name == node.name)
    if not f.node.reachable:
        raise RestoreRefused(
            f"{node.name} ({node.ip}) must be reachable with a verified host key: {f.node.error}",
            step="check nodes",
            node=node.name,
        )
    refuse_unfinished(((x.name, x.unfinished) for x in facts), spec.layout.data_dir)
    source = choose_healthy(spec, facts, health, node.name, healthy, options.restore_control_plane)
    run, endpoints = c.run_dir(spec.layout.data_dir, options.run_id), [e for e, s in health.items() if s == "ok"]
    initial = initial_cluster(spec, node, others)
    planned: list = [
        *stop_etcd(f),
        *refill(f, source, spec, run, options.restore_control_plane),
        steps.configure(f.name, spec.layout.etcd_conf, member_conf(source, spec, node, initial), run),
        steps.set_aside(f.name, spec.layout, options.run_id),
        *membership(spec, node, source.name, gone, endpoints),
        steps.start(f),
        *steps.checks(("healthy", "wait healthy"), ("member", "check member list"), ("data", "count keys")),
    ]
    if options.restore_control_plane:
        planned += steps.control_plane(f, source, node.ip, spec.layout, run)
    return _plan(spec, node, source, gone, initial, order(planned, PHASES), options)


def _failed_node(spec: ClusterSpec, failed: str) -> MasterNode:
    try:
        return spec.node(failed)
    except ConfigError:
        raise RestoreRefused(
            f"{failed!r} is not a node of cluster {spec.cluster_id} (nodes: {', '.join(n.name for n in spec.nodes)})",
            step="check nodes",
        ) from None


def _plan(spec, node, source, gone, initial: str, ordered: tuple[Step, ...], options: RestoreOptions) -> Plan:
    removed = f"`member remove {gone.hex_id}`" if gone else "not a member any more (no remove)"
    run = c.run_dir(spec.layout.data_dir, options.run_id)
    return Plan(
        kind=KIND,
        cluster_id=spec.cluster_id,
        run_id=options.run_id,
        steps=ordered,
        header=(
            f"failed node **{node.name}** ({spec.peer_url(node)}): {removed}, then `member add`",
            f"healthy node: **{source.name}**; run id `{options.run_id}`",
            f"ETCD_INITIAL_CLUSTER: `{initial}`",
        ),
        notes=_notes(node, source, gone, run, spec, options),
        info={
            "failed": node.name,
            "healthy": source.name,
            "remove_id": gone.hex_id if gone else None,
            "peer_url": spec.peer_url(node),
            "initial_cluster": initial,
        },
    )


def _notes(node, source, gone, run, spec, options) -> tuple[str, ...]:
    aside = c.aside_dir(spec.layout.data_dir, options.run_id)
    notes = [
        f"files are copied from the healthy node {source.name}, and etcdctl runs there",
        f"{node.name}'s old data dir is moved to {aside}; copies of every file changed are kept under {run}/saved",
        "membership changes come last: every file and the data dir are prepared first",
    ]
    if gone is None:
        notes.append(f"{node.name} is not in the member list (removed before): it is only added")
    else:
        notes.append(
            f"if a step after `member remove` fails, {node.name}'s files and data dir are put back but it "
            "stays out of the member list (its old data cannot rejoin); run the flow again to add it"
        )
    return tuple(notes)
