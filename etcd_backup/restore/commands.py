"""Shell commands of a restore, built from paths: keep copies aside, put them back, set data aside, restore a snapshot.

Nothing here deletes data: every file is copied under the run dir before it is
overwritten, data dirs are moved aside, and undo moves what the restore made into the
run dir before putting the old things back. Files are written in place (`cat >`), so
bind-mounted paths and mount points keep working.
"""

from __future__ import annotations

import posixpath
import re
import shlex

BUMP_REVISION = 1_000_000_000
START_WAIT = 15  # seconds an undo waits for `systemctl start etcd`; a member without quorum never reports ready


def q(path: str) -> str:
    """A path quoted for the shell."""
    return shlex.quote(path)


def run_dir(data_dir: str, run_id: str) -> str:
    """The per-run dir on a node (beside the data dir's home) that keeps copies, the snapshot and undone files."""
    return f"{posixpath.dirname(data_home(data_dir))}/etcd-restore-{run_id}"


def data_home(data_dir: str) -> str:
    """The dir a restore sets aside: the runbook's /var/lib/etcd for /var/lib/etcd/default.etcd."""
    parent = posixpath.dirname(data_dir.rstrip("/"))
    return data_dir.rstrip("/") if parent in ("/", "/var", "/var/lib", "") else parent


def aside_dir(data_dir: str, run_id: str) -> str:
    """Where the old data dir goes: /var/lib/etcd.bak-<run id>."""
    return f"{data_home(data_dir)}.bak-{run_id}"


def saved(path: str, run: str) -> str:
    """Where the copy of path is kept."""
    return f"{run}/saved{path}"


def save(path: str, run: str) -> str:
    """Keep a copy of a file or directory under the run dir, once (the first copy is the original)."""
    keep = saved(path, run)
    return (
        f"if [ -e {q(path)} ] && [ ! -e {q(keep)} ]; then mkdir -p {q(posixpath.dirname(keep))} && "
        f"cp -a {q(path)} {q(posixpath.dirname(keep))}/; fi"
    )


def put_back_file(path: str, run: str) -> str:
    """Undo for a file: write the kept copy back in place, or move a file that was not there into run/undone."""
    keep, undone = saved(path, run), f"{run}/undone{path}"
    return (
        f"if [ -e {q(keep)} ]; then cat {q(keep)} > {q(path)} && chmod --reference={q(keep)} {q(path)}; "
        f"elif [ -e {q(path)} ]; then mkdir -p {q(posixpath.dirname(undone))} && mv {q(path)} {q(undone)}; fi"
    )


def put_back_tree(path: str, run: str) -> str:
    """Undo for a directory: move its contents into run/undone, then copy the kept contents back."""
    keep, undone = saved(path, run), f"{run}/undone{path}"
    return (
        f"if [ -d {q(path)} ]; then mkdir -p {q(undone)} && cp -a {q(path)}/. {q(undone)}/ && "
        f"find {q(path)} -mindepth 1 -delete; fi; "
        f"if [ -d {q(keep)} ]; then mkdir -p {q(path)} && cp -a {q(keep)}/. {q(path)}/; "
        f"else rmdir {q(path)} 2>/dev/null || true; fi"
    )


def set_aside(data_dir: str, run_id: str) -> str:
    """Move the data dir's home aside (never delete it) and make an empty one; note when there was none."""
    home, aside, run = data_home(data_dir), aside_dir(data_dir, run_id), run_dir(data_dir, run_id)
    return (
        f"mkdir -p {q(run)} && if [ -e {q(home)} ]; then mv {q(home)} {q(aside)}; "
        f"else : > {q(run)}/no-data-dir; fi && mkdir -p {q(home)}"
    )


def put_back_data(data_dir: str, run_id: str) -> str:
    """Undo of set_aside: move what the restore made into the run dir, then the old data dir back (repeatable)."""
    home, aside, run = data_home(data_dir), aside_dir(data_dir, run_id), run_dir(data_dir, run_id)
    made = f"if [ -e {q(home)} ]; then mkdir -p {q(run)} && mv {q(home)} {q(run)}/restored-data; fi"
    return (
        f"if [ -e {q(aside)} ]; then {made} && mv {q(aside)} {q(home)}; "
        f"elif [ -e {q(run)}/no-data-dir ]; then {made} && rm -f {q(run)}/no-data-dir; fi"
    )


def start_bounded(unit: str = "etcd", wait: int = START_WAIT) -> str:
    """Start a unit, waiting at most `wait` seconds (a member whose peers are down never reports ready)."""
    return f"timeout {wait} systemctl start {unit}; rc=$?; [ $rc -eq 0 ] || [ $rc -eq 124 ]"


def parse_version(text: str | None) -> tuple[int, int, int] | None:
    """(major, minor, patch) from '3.5.1' or 'v3.4.27'; None when unreadable."""
    match = re.match(r"v?(\d+)\.(\d+)\.(\d+)", (text or "").strip())
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def supports_bump(version: tuple[int, int, int]) -> bool:
    """True when `snapshot restore` has --bump-revision/--mark-compacted (3.4.27+, 3.5.10+, 3.6+)."""
    if version >= (3, 6, 0):
        return True
    if version[:2] == (3, 5):
        return version >= (3, 5, 10)
    return version[:2] == (3, 4) and version >= (3, 4, 27)


def restore_tool(version: tuple[int, int, int], has_etcdutl: bool) -> str | None:
    """'etcdutl' (3.5+), 'etcdctl' (3.3/3.4, or 3.5 without etcdutl), or None when neither can restore (3.6+)."""
    if version >= (3, 5, 0) and has_etcdutl:
        return "etcdutl"
    return "etcdctl" if version < (3, 6, 0) else None


def restore_snapshot(
    tool_path: str,
    tool: str,
    snapshot: str,
    *,
    name: str,
    peer_url: str,
    initial_cluster: str,
    token: str,
    data_dir: str,
    bump: bool,
) -> str:
    """The `snapshot restore` command of one member (etcdctl needs ETCDCTL_API=3)."""
    args = [
        f"--name={name}",
        f"--initial-cluster={initial_cluster}",
        f"--initial-cluster-token={token}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--data-dir={data_dir}",
    ]
    if bump:
        args += [f"--bump-revision={BUMP_REVISION}", "--mark-compacted"]
    prefix = "ETCDCTL_API=3 " if tool == "etcdctl" else ""
    return f"{prefix}{q(tool_path)} snapshot restore {q(snapshot)} " + " ".join(q(a) for a in args)


def set_advertise_address(apiserver_conf: str, ip: str) -> str:
    """Put the node's IP into --advertise-address, replacing only the address (flags on one line or one per line)."""
    expr = f"s/\\(--advertise-address=\\)[^[:space:]\"'\\\\]*/\\1{ip}/g"
    return f"sed -i {q(expr)} {q(apiserver_conf)}"
