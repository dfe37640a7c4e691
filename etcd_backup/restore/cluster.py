"""Pure planning of a whole-cluster restore (quorum lost; runbook 3.1.2 and 3.2.2): checks that refuse, ordered steps.

The snapshot goes to every node first, into the run dir (nothing of etcd's is touched,
so it can overlap the last checks). Services stop before any file changes so that a
rollback (the undos in reverse) puts files and data back before it starts etcd again
where it ran.
"""

from __future__ import annotations

from etcd_backup import flow_names, recovery
from etcd_backup.cluster import ClusterSpec
from etcd_backup.errors import RestoreRefused
from etcd_backup.pipeline import VerifyResult
from etcd_backup.restore import commands as c
from etcd_backup.restore import steps
from etcd_backup.restore.conf import rewrite_conf
from etcd_backup.restore.facts import RestoreFacts
from etcd_backup.restore.leftovers import refuse_unfinished
from etcd_backup.restore.plan import Plan, RestoreOptions, order

PHASES = ("upload", "stop", "refill", "configure", "set-aside", "restore", "start", "check", "kubernetes")
HEADROOM = 128 << 20  # free bytes wanted on top of the snapshot copy and the restored data dir
KIND = "restore"


def refuse_if_quorum(spec: ClusterSpec, health: dict[str, str], force: bool, members: int | None = None) -> None:
    """Refuse a whole-cluster restore while quorum holds (replace members instead), unless forced.

    `members` is the length of the member list when it could be read (default: the block's nodes).
    """
    if recovery.has_quorum(spec, health, members) and not force:
        ok = recovery.healthy_nodes(spec, health)
        raise RestoreRefused(
            f"quorum is healthy ({len(ok)} of {members or len(spec.nodes)} members answer: {', '.join(ok)}); "
            f"replace the failed members with the flow {flow_names.RESTORE_MEMBER} instead, or pass "
            "force=True to restore the whole cluster from a backup anyway",
            step="check quorum",
        )


def choose_retained(facts: list[RestoreFacts], wanted: str | None = None) -> RestoreFacts:
    """The node to copy files from: the given one, or the best eligible one (recovery.choose_source)."""
    chosen, reasons = recovery.choose_source(facts, wanted=wanted)
    if chosen is not None:
        return chosen
    if wanted:
        known = next((f for f in facts if wanted in (f.name, f.node.ip)), None)
        if known is None:
            raise RestoreRefused(f"retained node {wanted!r} is not a node of the cluster", step="choose retained")
        raise RestoreRefused(
            f"cannot copy files from {known.name}: {reasons[known.name]}", step="choose retained", node=known.name
        )
    raise RestoreRefused(
        "no node can be the source of the etcd files ("
        + "; ".join(f"{n}: {why}" for n, why in reasons.items())
        + "); restore etcd, etcdctl, /etc/etcd, /etc/kubernetes and the unit on one node by hand first",
        step="choose retained",
    )


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


def _tool(f: RestoreFacts, retained: RestoreFacts, spec: ClusterSpec, bump: bool = True) -> tuple[str, str, bool]:
    """(tool name, its path, whether to bump the revision: wanted and supported) of the node once refilled."""
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
    return tool, path, bump and c.supports_bump(version)


def _conf(f: RestoreFacts, retained: RestoreFacts, spec: ClusterSpec, token: str) -> str:
    """The member's new etcd.conf, from its own config when it kept it, else from the retained node's."""
    source = f if f.node.files.get("etcd_conf") and f.conf_text else retained
    member = spec.node(f.name)
    return rewrite_conf(
        source.conf_text or "",
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
) -> Plan:
    """The ordered steps that restore every member of the cluster from one snapshot (runbook 3.1.2 / 3.2.2)."""
    check_nodes(facts, snapshot)
    refuse_unfinished(((f.name, f.unfinished) for f in facts), spec.layout.data_dir)
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
    tools = {f.name: _tool(f, keep, spec, bump=not options.point_in_time) for f in facts}
    wire = "zstd" if options.wire == "zstd" and all(f.files.get("zstd") for f in facts) else "raw"
    planned: list = []
    for f in facts:
        planned.append(steps.upload(f.name, run, snapshot.raw_sha256, wire))
        planned += steps.stop(f)
        if f is not keep:
            planned += steps.refill(f, keep, layout, run)
        planned.append(steps.configure(f.name, layout.etcd_conf, _conf(f, keep, spec, token), run))
        planned += _restore(f, spec, tools[f.name], run, token, run_id)
        planned += _kubernetes(f, keep, spec, run, options)
    planned += steps.checks(("healthy", "wait healthy"), ("members", "check member list"), ("data", "count keys"))
    tool_names = {n: t[0] + (" --bump-revision" if t[2] else "") for n, t in tools.items()}
    return Plan(
        kind=KIND,
        cluster_id=spec.cluster_id,
        run_id=run_id,
        steps=order(planned, PHASES),
        header=_header(snapshot, keep.name, token, run_id, tool_names, options.point_in_time),
        notes=_notes(tools, keep, spec, run_id, wire, facts, bool(options.point_in_time)),
        info={"backup": snapshot.key, "retained": keep.name, "token": token, "tools": tool_names, "wire": wire},
    )


def _restore(f: RestoreFacts, spec: ClusterSpec, tool: tuple[str, str, bool], run: str, token: str, run_id: str):
    """Set the data dir aside, `snapshot restore` into a new one, start etcd."""
    command = _restore_command(spec, f.name, tool, run, token)
    return [steps.set_aside(f.name, spec.layout, run_id), steps.restore(f.name, command), steps.start(f)]


def _restore_command(spec: ClusterSpec, name: str, tool: tuple[str, str, bool], run: str, token: str) -> str:
    member = spec.node(name)
    return c.restore_snapshot(
        tool[1],
        tool[0],
        f"{run}/{steps.SNAPSHOT_NAME}",
        name=name,
        peer_url=spec.peer_url(member),
        initial_cluster=spec.initial_cluster(),
        token=token,
        data_dir=spec.layout.data_dir,
        bump=tool[2],
    )


def _kubernetes(f: RestoreFacts, keep: RestoreFacts, spec: ClusterSpec, run: str, options: RestoreOptions) -> list:
    if options.restore_control_plane and f is not keep:
        return steps.control_plane(f, keep, spec.node(f.name).ip, spec.layout, run)
    return steps.restart_kube(f) if "kube-apiserver" in f.kube_active else []


def _header(
    snapshot: VerifyResult, retained: str, token: str, run_id: str, tools: dict[str, str], point_in_time: str = ""
) -> tuple[str, ...]:
    s = snapshot
    content = f", revision {s.revision}, {s.key_count} keys" if s.revision is not None else ", legacy: no manifest"
    what = f"point in time: {point_in_time}; snapshot" if point_in_time else "backup"
    return (
        f"{what}: `{s.key}` ({s.raw_size} bytes raw, sha256 `{s.raw_sha256[:16]}…`{content})",
        f"retained node: **{retained}**; run id `{run_id}`; new cluster token `{token}`",
        "restore tool per node: " + ", ".join(f"{n}: `{t}`" for n, t in tools.items()),
    )


def _notes(
    tools, keep: RestoreFacts, spec: ClusterSpec, run_id: str, wire: str, facts, point_in_time: bool = False
) -> tuple[str, ...]:
    run, aside = c.run_dir(spec.layout.data_dir, run_id), c.aside_dir(spec.layout.data_dir, run_id)
    lacking = [f.name for f in facts if not f.files.get("zstd")]
    notes = [
        f"files are copied from the retained node {keep.name}",
        "the snapshot is compressed once with zstd and sent to every node at the same time"
        if wire == "zstd"
        else "the snapshot is sent uncompressed to every node at the same time"
        + (f" (no zstd on {', '.join(lacking)})" if lacking else ""),
        f"old data dirs are moved to {aside} on every node; copies of every file changed are kept under {run}/saved",
        "if any step fails, every started step is undone in reverse order (data dirs and files put back, "
        "etcd started again where it ran)",
    ]
    if point_in_time:
        notes.append(
            "point-in-time restore: --bump-revision/--mark-compacted are not used, so the restored cluster's "
            "revision is exactly the target, below what watchers saw (the apiservers the plan stopped start again "
            "with empty watch caches; restart any other client that watches etcd)"
        )
    elif any(not bump for _, _, bump in tools.values()):
        notes.append(
            "--bump-revision/--mark-compacted are not used where the node's etcd lacks them "
            "(3.5.10+, 3.4.27+): Kubernetes watchers may need a restart of the apiservers"
        )
    return tuple(notes)
