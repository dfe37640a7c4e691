"""The one plan type of both restores: ordered per-node steps grouped in phases, with a header and notes.

Phases run in order; within a phase every node works in parallel, each node's steps
in order. A planner builds the steps and `order` sorts them by its phase list.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from etcd_backup.restore.actions import Step


@dataclass(frozen=True)
class RestoreOptions:
    """Choices of one restore run: its id (a UTC timestamp), the Kubernetes control plane, the snapshot's wire codec.

    wire: "zstd" (when every node has zstd; the default) or "raw" to send the snapshot uncompressed.
    point_in_time: what a point-in-time restore rebuilt (one line), or "" for a plain backup; such a restore
    never uses --bump-revision, so the restored revision is exactly the target.
    """

    run_id: str
    restore_control_plane: bool = False
    wire: str = "zstd"
    point_in_time: str = ""


@dataclass(frozen=True)
class Plan:
    """Every step of a whole-cluster restore or a member replacement, in execution order.

    `header` holds markdown lines on what the plan works from (backup, source node, token,
    member ids); `info` the values the flow returns and names in messages.
    """

    kind: str
    cluster_id: str
    run_id: str
    steps: tuple[Step, ...]
    header: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [s.name for s in self.steps]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"step names must be unique in a plan: {dup}")

    def phases(self) -> list[tuple[str, list[Step]]]:
        """(phase, its steps) in execution order."""
        out: list[tuple[str, list[Step]]] = []
        for step in self.steps:
            if not out or out[-1][0] != step.phase:
                out.append((step.phase, []))
            out[-1][1].append(step)
        return out

    def for_node(self, name: str) -> list[Step]:
        """The steps of one node, in order."""
        return [s for s in self.steps if s.node == name]

    def step(self, name: str) -> Step:
        """The step with this name."""
        return next(s for s in self.steps if s.name == name)


def order(steps: Iterable[Step | None], phases: tuple[str, ...]) -> tuple[Step, ...]:
    """The steps (None left out) sorted by phase; each node keeps its own order within a phase."""
    return tuple(sorted((s for s in steps if s is not None), key=lambda s: phases.index(s.phase)))
