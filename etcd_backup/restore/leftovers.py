"""What a restore keeps on each node it changes, so that a run that never finished is found and can be undone.

Before its first change to a node a run writes `<run dir>/unfinished` (which run, and what to do)
and `<run dir>/rollback.sh`; before each step that changes the node it writes the step's undo
commands to `<run dir>/undo/NNN.sh`. An undo the flow did removes its file, and a run that ends
(done, or every step on the node undone) removes the marker. So a marker found later belongs to a
run that was killed or lost the node, and `sh <run dir>/rollback.sh` on that node runs the undos
the flow would have run there, newest first. The next run refuses until one of the two ways out
in `refuse_unfinished`'s message is taken.
"""

from __future__ import annotations

import logging
import posixpath
import shlex
import socket
import threading
from collections.abc import Iterable
from datetime import UTC, datetime

from etcd_backup.errors import EtcdBackupError, RestoreRefused
from etcd_backup.nodes import Node
from etcd_backup.restore import commands as c
from etcd_backup.restore.actions import CLUSTER, Step

log = logging.getLogger(__name__)

MARKER = "unfinished"
ROLLBACK = "rollback.sh"

_ROLLBACK = """\
#!/bin/sh
# Put this node back as it was before restore run {run_id}: undo each step the run started here, newest first.
cd {run} || exit 1
for f in $(ls -r undo/*.sh 2>/dev/null); do
  head -n 1 "$f"
  sh "$f" || {{ echo "rollback stopped at $f: fix the cause and run this script again" >&2; exit 1; }}
  rm -f "$f"
done
rm -f {marker}
echo "restore run {run_id} is rolled back on this node"
"""


def marker_text(run: str, run_id: str, cluster_id: str, journal: str, data_dir: str) -> str:
    """What the marker says to a person who finds it on the node."""
    return (
        f"restore run {run_id} of cluster {cluster_id} started changing this node at "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC (journal {socket.gethostname()}:{journal}).\n"
        "If this file is still here and no restore is running, that run never finished.\n"
        f"The files it changed are kept under {run}/saved, the old data dir at {c.aside_dir(data_dir, run_id)}.\n"
        f"Put this node back as it was before the run: sh {run}/{ROLLBACK}\n"
        f"Or keep it as it is and restore again: rm {run}/{MARKER}, then run the restore flow again.\n"
    )


class NodeRecord:
    """The undo commands of one run kept on its nodes (thread-safe: the nodes' steps run side by side)."""

    def __init__(self, run: str, run_id: str, marker: str):
        self.run, self.run_id, self.marker = run, run_id, marker
        self.files: dict[str, str] = {}  # step name -> its undo file
        self.opened: set[str] = set()
        self._lock = threading.Lock()

    def before(self, node: Node, step: Step) -> None:
        """Before a step changes its node: open the run there (first time) and keep the step's undo commands."""
        if not step.destructive or step.node == CLUSTER:
            return
        with self._lock:
            first = step.node not in self.opened
            path = self.files.get(step.name) or f"{self.run}/undo/{len(self.files) + 1:03d}.sh"
            if step.undo:
                self.files[step.name] = path
        if not first and not step.undo:
            return
        parts = [f"mkdir -p {c.q(self.run)}/undo"]
        if first:
            script = _ROLLBACK.format(run=c.q(self.run), run_id=self.run_id, marker=MARKER)
            parts += [
                f"printf %s {shlex.quote(self.marker)} > {c.q(self.run)}/{MARKER}",
                f"printf %s {shlex.quote(script)} > {c.q(self.run)}/{ROLLBACK}",
            ]
        undo = "".join(f"( {u.cmd} ) || exit 1\n" for u in step.undo)
        if undo:
            parts.append(f"cat > {c.q(path)}")
        node.run(" && ".join(parts), stdin=f"# undo: {step.name}\n{undo}".encode() if undo else None, timeout=60)
        with self._lock:
            self.opened.add(step.node)

    def undone(self, node: Node, step: Step) -> None:
        """After the flow undid a step: its undo file goes."""
        path = self.files.get(step.name)
        if path:
            node.run(f"rm -f {c.q(path)}", timeout=60)

    def close(self, nodes: dict[str, Node], ok: bool) -> dict[str, str]:
        """End the run on each node it opened (ok: it succeeded); {node: rollback script} where it stays unfinished.

        After a failure the marker goes only where every undo file went (the flow undid every step there).
        """
        run = c.q(self.run)
        clean = f"rm -rf {run}/undo && rm -f {run}/{ROLLBACK} {run}/{MARKER} && echo closed"
        cmd = clean if ok else f'if [ -z "$(ls -A {run}/undo 2>/dev/null)" ]; then {clean}; fi'
        left = {}
        for name in sorted(self.opened):
            try:
                closed = "closed" in nodes[name].run(cmd, timeout=60).stdout
            except EtcdBackupError as exc:
                log.warning("%s: restore run %s left open: %s", name, self.run_id, exc)
                closed = False
            if not closed:
                left[name] = posixpath.join(self.run, ROLLBACK)
        return left


def rollback_advice(left: dict[str, str]) -> str:
    """'finish it with `sh <run dir>/rollback.sh` on etcd3 once that node answers' for the nodes left open."""
    by_script: dict[str, list[str]] = {}
    for name, script in sorted(left.items()):
        by_script.setdefault(script, []).append(name)
    return "; ".join(
        f"finish it with `sh {script}` on {', '.join(names)} once {'it answers' if len(names) == 1 else 'they answer'}"
        for script, names in by_script.items()
    )


def refuse_unfinished(found: Iterable[tuple[str, tuple[str, ...]]], data_dir: str) -> None:
    """Refuse while a node holds a run that never finished: (node name, its unfinished run dirs) pairs."""
    runs: dict[str, list[str]] = {}
    for name, dirs in found:
        for run in dirs:
            runs.setdefault(run, []).append(name)
    if not runs:
        return
    problems = []
    for run, names in sorted(runs.items()):
        run_id = posixpath.basename(run).removeprefix("etcd-restore-")
        where = ", ".join(names)
        problems.append(
            f"restore run {run_id} never finished on {where} (its flow was stopped or lost the node); "
            f"the files it changed are kept under {run}/saved and the old data dir at "
            f"{c.aside_dir(data_dir, run_id)}. Unless that run is still going, either put the nodes back as "
            f"they were before it: `sh {run}/{ROLLBACK}` on {where}; or keep them as they are: "
            f"`rm {run}/{MARKER}` on {where}"
        )
    raise RestoreRefused("; ".join(problems) + "; then run this flow again", step="check leftovers")
