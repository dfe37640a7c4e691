"""Pure retention planning (keep the newest N, plus hourly/daily/weekly/monthly tiers) and pruning."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

from etcd_backup.catalog import Backup
from etcd_backup.errors import ConfigError
from etcd_backup.storage.base import Storage

_TIERS = {
    "hourly": lambda t: t.strftime("%Y-%m-%d %H:00"),
    "daily": lambda t: t.strftime("%Y-%m-%d"),
    "weekly": lambda t: "{:04d}-W{:02d}".format(*t.isocalendar()[:2]),
    "monthly": lambda t: t.strftime("%Y-%m"),
}
_WORDS = {"keep": "keep_last", "last": "keep_last", **{tier: tier for tier in _TIERS}}


@dataclass(frozen=True)
class Policy:
    """Keep the newest keep_last complete backups plus the newest one per hour/day/week/month."""

    keep_last: int
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0

    def __post_init__(self):
        for name in ("keep_last", *_TIERS):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"retention {name} must be a whole number >= 0, got {value!r}")
        if self.keep_last < 1:
            raise ConfigError("keep must be greater than or equal to 1: retention always keeps the newest backup")

    @classmethod
    def parse(cls, text: str | int | Tiers) -> Policy:
        """Read a policy like 7, "keep 7", "keep 7, daily 7, weekly 4, monthly 6" or Tiers(last=7, daily=7)."""
        if isinstance(text, Tiers):
            return cls(keep_last=text.last, **text.model_dump(exclude={"last"}))
        if isinstance(text, int):
            return cls(keep_last=text)
        text = text.strip()
        if re.fullmatch(r"\d+", text):
            return cls(keep_last=int(text))
        values: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in re.split(r"[,;]", text))):
            match = re.fullmatch(r"([a-z_]+)\s*[ =:]\s*(\d+)", part.lower())
            if not match or match[1] not in _WORDS:
                raise ConfigError(
                    f"cannot read retention {text!r} at {part!r}; "
                    "write e.g. 'keep 7, hourly 24, daily 7, weekly 4, monthly 6'"
                )
            name = _WORDS[match[1]]
            if name in values:
                raise ConfigError(f"retention {text!r} names {match[1]!r} twice")
            values[name] = int(match[2])
        if not values:
            raise ConfigError("retention policy is empty; write e.g. 'keep 7'")
        values.setdefault("keep_last", 1)
        return cls(**values)

    def __str__(self) -> str:
        tiers = [f"{t} {getattr(self, t)}" for t in _TIERS if getattr(self, t)]
        return ", ".join([f"keep {self.keep_last}", *tiers])


class Tiers(BaseModel):
    """Retention as form fields: the newest `last` backups plus the newest one per hour, day, week and month."""

    model_config = ConfigDict(extra="forbid", title="Retention tiers")

    last: int = Field(7, ge=1, description="keep the newest N complete backups (the newest is always kept)")
    hourly: int = Field(0, ge=0, description="also keep the newest backup of each of the last N hours")
    daily: int = Field(0, ge=0, description="also keep the newest backup of each of the last N days")
    weekly: int = Field(0, ge=0, description="also keep the newest backup of each of the last N ISO weeks")
    monthly: int = Field(0, ge=0, description="also keep the newest backup of each of the last N months")


def _checked(value: int | str | Tiers) -> int | str | Tiers:
    """Validate a retention parameter with Policy.parse (pydantic wants ValueError)."""
    try:
        Policy.parse(value)
    except ConfigError as exc:
        raise ValueError(exc.message) from None
    return value


def _one_message(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Validate a retention parameter with one readable message instead of one per union member."""
    try:
        return handler(value)
    except ValidationError as exc:
        if not isinstance(value, dict):
            reasons = [e["msg"].removeprefix("Value error, ") for e in exc.errors() if not e["loc"]]
            raise ValueError(
                "; ".join(reasons) or f"retention {value!r} is not a count, a policy string or a table of tiers"
            ) from None
        raise ValueError("; ".join(_tier_problem(e) for e in exc.errors() if e["loc"][:1] == ("Tiers",))) from None


def _tier_problem(error: Any) -> str:
    """One line for an error in a table of tiers, with the closest tier for an unknown one."""
    name = ".".join(map(str, error["loc"][1:]))
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(name, list(Tiers.model_fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (tiers: {', '.join(Tiers.model_fields)})"
        return f"unknown retention tier {name!r}{hint}"
    return f"retention {name}: {error['msg']}"


Retention = Annotated[int | str | Tiers, AfterValidator(_checked), WrapValidator(_one_message)]
"""A retention parameter: a count (keep the newest N), a policy string Policy.parse reads, or Tiers fields."""


@dataclass
class RetentionPlan:
    """What to keep and what to remove, with one reason per backup key."""

    keep: list[Backup] = field(default_factory=list)
    remove: list[Backup] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)


def _never_removed(backup: Backup, now: datetime, cluster_id: str) -> str | None:
    if backup.cluster_id != cluster_id:
        return f"belongs to cluster {backup.cluster_id}, not {cluster_id}: never pruned"
    if backup.legacy:
        return "legacy backup without manifest: never pruned"
    if not backup.complete:
        return "incomplete (no valid manifest): never pruned"
    if backup.time > now:
        return "dated after now: never pruned"
    return None


def plan(backups: Sequence[Backup], policy: Policy, now: datetime, cluster_id: str | None = None) -> RetentionPlan:
    """Decide which backups of one cluster to keep and which to remove, newest always kept."""
    clusters = {b.cluster_id for b in backups}
    if cluster_id is None and len(clusters) > 1:
        raise ConfigError(
            f"retention got backups of several clusters ({', '.join(sorted(clusters))}); name the cluster"
        )
    cluster_id = cluster_id or next(iter(clusters), "")
    result = RetentionPlan()
    candidates = []
    for backup in backups:
        reason = _never_removed(backup, now, cluster_id)
        if reason:
            result.keep.append(backup)
            result.reasons[backup.key] = reason
        else:
            candidates.append(backup)
    candidates.sort(key=lambda b: (b.time, b.key), reverse=True)
    chosen = _choose(candidates, policy)
    for backup in candidates:
        if backup.key in chosen:
            result.keep.append(backup)
            result.reasons[backup.key] = chosen[backup.key]
        else:
            result.remove.append(backup)
            result.reasons[backup.key] = f"not selected by policy '{policy}'"
    return result


def _choose(newest_first: list[Backup], policy: Policy) -> dict[str, str]:
    """Reasons for every kept candidate, by key."""
    reasons: dict[str, list[str]] = {}
    for rank, backup in enumerate(newest_first[: policy.keep_last], start=1):
        reasons.setdefault(backup.key, []).append("newest" if rank == 1 else f"last {rank}")
    for tier, bucket_of in _TIERS.items():
        wanted, seen = getattr(policy, tier), set[str]()
        for backup in newest_first:
            if len(seen) >= wanted:
                break
            bucket = bucket_of(backup.time)
            if bucket not in seen:
                seen.add(bucket)
                reasons.setdefault(backup.key, []).append(f"{tier} {bucket}")
    return {key: ", ".join(parts) for key, parts in reasons.items()}


def prune(storage: Storage, retention: RetentionPlan, dry_run: bool = True) -> list[str]:
    """Delete the planned backups (manifest first, so a half-deleted one is invisible); return their keys."""
    removed = []
    for backup in retention.remove:
        if not backup.complete or backup.legacy:
            continue
        if not dry_run:
            storage.delete([backup.manifest_key])
            storage.delete([backup.key])
        removed.append(backup.key)
    return removed
