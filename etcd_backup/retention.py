"""Pure retention planning (keep the newest N, plus hourly/daily/weekly/monthly tiers) and pruning."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
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

from etcd_backup.catalog import LONGEST_BACKUP, Backup, verified_key
from etcd_backup.errors import ConfigError
from etcd_backup.storage.base import Storage

_TIERS = {
    "hourly": lambda t: t.strftime("%Y-%m-%d %H:00"),
    "daily": lambda t: t.strftime("%Y-%m-%d"),
    "weekly": lambda t: "{:04d}-W{:02d}".format(*t.isocalendar()[:2]),
    "monthly": lambda t: t.strftime("%Y-%m"),
}
_WORDS = {"keep": "keep_last", "last": "keep_last", **{tier: tier for tier in _TIERS}}
# An object without a manifest dated longer ago than this is a leftover (of a prune that deleted the manifest
# and then failed, or of a backup that failed and could not remove its object), not a backup being written:
# the longest backup attempt, plus an hour for workers whose clocks differ.
LEFTOVER_AFTER = LONGEST_BACKUP + timedelta(hours=1)


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
    """What to keep and what to remove, with one reason per backup key, and what a person should look at."""

    keep: list[Backup] = field(default_factory=list)
    remove: list[Backup] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _outside_policy(backup: Backup, now: datetime, cluster_id: str) -> tuple[bool, str] | None:
    """(remove?, reason) for a backup the policy does not rank, or None for one it does."""
    if backup.cluster_id != cluster_id:
        return False, f"belongs to cluster {backup.cluster_id}, not {cluster_id}: never pruned"
    if backup.legacy:
        return False, "legacy backup without manifest: never pruned"
    if backup.time > now:
        return False, "dated after now (a clock was wrong?): kept, not counted by the policy, never pruned"
    if backup.complete:
        return None
    if backup.manifest_stored:
        return False, "incomplete (its manifest is invalid or does not match the object): never pruned"
    age = now - backup.time
    if age > LEFTOVER_AFTER:
        return True, (
            f"incomplete leftover: no manifest, dated {_hours(age)} ago, longer than a backup may take "
            f"({_hours(LEFTOVER_AFTER)}); left by an interrupted prune or a failed backup"
        )
    return False, f"incomplete (no manifest yet): dated {_hours(age)} ago, a backup may still be writing it"


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.1f} h"


def _future_warning(future: list[Backup], counted: int, policy: Policy, now: datetime) -> str:
    names = ", ".join(f"{b.key} ({b.time:%Y-%m-%d %H:%M:%S})" for b in future)
    return (
        f"{len(future)} backup(s) dated after now ({now:%Y-%m-%d %H:%M:%S} UTC), a clock was wrong: {names}. "
        f"They are kept and not counted by '{policy}', so {counted + len(future)} complete backups are kept; "
        "check them and delete them by hand"
    )


def plan(backups: Sequence[Backup], policy: Policy, now: datetime, cluster_id: str | None = None) -> RetentionPlan:
    """Decide which backups of one cluster to keep and which to remove; the newest and the newest verified are kept."""
    clusters = {b.cluster_id for b in backups}
    if cluster_id is None and len(clusters) > 1:
        raise ConfigError(
            f"retention got backups of several clusters ({', '.join(sorted(clusters))}); name the cluster"
        )
    cluster_id = cluster_id or next(iter(clusters), "")
    result = RetentionPlan()
    candidates = []
    for backup in backups:
        decided = _outside_policy(backup, now, cluster_id)
        if decided is None:
            candidates.append(backup)
            continue
        (result.remove if decided[0] else result.keep).append(backup)
        result.reasons[backup.key] = decided[1]
    candidates.sort(key=lambda b: (b.time, b.key), reverse=True)
    chosen = _choose(candidates, policy)
    for backup in candidates:
        if backup.key in chosen:
            result.keep.append(backup)
            result.reasons[backup.key] = chosen[backup.key]
        else:
            result.remove.append(backup)
            result.reasons[backup.key] = f"not selected by policy '{policy}'"
    future = [b for b in backups if b.cluster_id == cluster_id and b.complete and b.time > now]
    if future:
        result.warnings.append(_future_warning(future, len(chosen), policy, now))
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
    verified = next((b for b in newest_first if b.verification and b.verification.ok), None)
    if verified is not None:
        reasons.setdefault(verified.key, []).append("newest verified (restored and checked)")
    return {key: ", ".join(parts) for key, parts in reasons.items()}


def prune(storage: Storage, retention: RetentionPlan, dry_run: bool = True) -> list[str]:
    """Delete the planned backups (manifest first, so a half-deleted one is invisible) and leftovers; return keys.

    A prune that fails between the two deletes leaves an object without a manifest: the next plan
    finds it as a leftover once it is older than any backup run, and the next prune removes it.
    """
    removed = []
    for backup in retention.remove:
        if backup.legacy or (not backup.complete and backup.manifest_stored):
            continue
        if not dry_run:
            if backup.complete:
                storage.delete([backup.manifest_key])
            storage.delete([backup.key, verified_key(backup.key)])
        removed.append(backup.key)
    return removed
