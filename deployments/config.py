"""The backup schedule file (`backups.toml`): every entry checked, every problem listed, before anything is deployed."""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prefect.schedules import Cron
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from etcd_backup.compression import Compression
from etcd_backup.encryption import parse_recipients
from etcd_backup.errors import ConfigError
from etcd_backup.retention import Retention
from flows.locks import DEFAULT_TRANSFERS

CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day", 1, 31), ("month", 1, 12), ("weekday", 0, 7))
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
TOP_LEVEL = ("backup", "limits")
DEFAULT_VERIFY_CRON = "0 6 * * 1"  # Mondays 06:00 in the entry's timezone
NO_SCHEDULE = "none"
CONTINUOUS_RUN_MINUTES = 10  # a scheduled follower run stops after this long; the next run resumes after it
CONTINUOUS_CRON = "*/10 * * * *"  # ... and the schedule starts one this often (a run that died: back within it)


def check_cron(expr: str, timezone: str = "UTC") -> str:
    """Accept a five-field crontab expression (as in the runbook) or raise ConfigError."""
    fields = expr.split()
    if len(fields) != 5:
        raise ConfigError(
            f"cron {expr!r} has {len(fields)} fields; use the five crontab fields "
            "'<minute> <hour> <day> <month> <weekday>', e.g. '0 0 * * *'",
            step="schedule",
        )
    for text, (name, low, high) in zip(fields, CRON_FIELDS, strict=True):
        for step in re.findall(r"/(\d+)", text):
            if not 1 <= int(step) <= high - low + 1:
                where = f"step /{step} of the {name} field must be between 1 and {high - low + 1}"
                raise ConfigError(f"cron {expr!r}: {where}", step="schedule")
    try:
        Cron(expr, timezone=timezone)
    except ValueError as exc:
        raise ConfigError(f"cron {expr!r} is not valid: {exc}", step="schedule") from None
    return expr


class BackupSchedule(BaseModel):
    """One scheduled backup: which cluster, where to, when and how many to keep."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="deployment name; default the cluster's (needed for a 2nd entry)")
    cluster: str = Field(description="EtcdCluster block name")
    storage: str = Field(description="storage block as '<block-type-slug>/<name>'")
    cron: str = "0 0 * * *"
    timezone: str = "UTC"
    keep: Retention = 7
    compression: Compression = "zstd"
    encrypt_to: list[str] = []
    notify: str | None = Field(None, description="notification block as '<block-type-slug>/<name>'")
    identity: str | None = Field(None, description="AgeIdentity block the restore and verify deployments decrypt with")
    continuous: bool = Field(
        False, description="also follow every change into segments (etcd-continuous-backup) for point-in-time restore"
    )
    verify_cron: str | None = Field(
        None, description=f"when etcd-verify-backup checks the latest backup (default '{DEFAULT_VERIFY_CRON}')"
    )

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        try:
            return check_cron(v)
        except ConfigError as exc:
            raise ValueError(exc.message) from None

    @field_validator("verify_cron")
    @classmethod
    def _verify_cron(cls, v: str | None) -> str | None:
        if v is None or v == NO_SCHEDULE:
            return v
        try:
            return check_cron(v)
        except ConfigError as exc:
            raise ValueError(f"{exc.message} (or '{NO_SCHEDULE}' for no scheduled verification)") from None

    @model_validator(mode="after")
    def _verify_can_decrypt(self) -> BackupSchedule:
        if self.encrypt_to and not self.identity and self.verify_cron not in (None, NO_SCHEDULE):
            raise ValueError(
                "verify_cron with encrypt_to but no identity: etcd-verify-backup could not decrypt the backups; "
                f'set identity = "<AgeIdentity block>" or verify_cron = "{NO_SCHEDULE}"'
            )
        return self

    @property
    def verify_schedule(self) -> str | None:
        """The verification's cron: verify_cron, else weekly unless the backups are encrypted to keys kept away."""
        if self.verify_cron is not None:
            return None if self.verify_cron == NO_SCHEDULE else self.verify_cron
        return None if self.encrypt_to and not self.identity else DEFAULT_VERIFY_CRON

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {v!r}; use an IANA name such as 'UTC' or 'Asia/Shanghai'") from None
        return v

    @field_validator("storage", "notify")
    @classmethod
    def _slug(cls, v: str | None) -> str | None:
        if v is not None and v.count("/") != 1:
            raise ValueError(f"{v!r} must be '<block-type-slug>/<name>', e.g. 'ufile-storage/prod'")
        return v

    @field_validator("name", "cluster")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not NAME.fullmatch(v):
            raise ValueError(f"{v!r} must be letters, digits, '-', '_' or '.' (at most 63)")
        return v

    @field_validator("encrypt_to")
    @classmethod
    def _recipients(cls, v: list[str]) -> list[str]:
        for recipient in v:
            try:
                parse_recipients([recipient])
            except ConfigError:
                raise ValueError(f"{recipient!r} is not an age public key (age1...) or an SSH public key") from None
        return v

    @property
    def deployment(self) -> str:
        """The name of this entry's deployments: `name`, or the cluster's name."""
        return self.name or self.cluster

    def parameters(self) -> dict:
        """The etcd-backup flow parameters of this schedule (block names only, never secrets)."""
        return self.model_dump(include={"cluster", "storage", "keep", "compression", "encrypt_to", "notify"})

    def continuous_parameters(self) -> dict:
        """The etcd-continuous-backup flow parameters: this entry's blocks and keys, and, scheduled, its run length."""
        chosen = self.model_dump(include={"cluster", "storage", "compression", "encrypt_to", "notify"})
        return chosen | ({"run_minutes": CONTINUOUS_RUN_MINUTES} if self.continuous else {})

    def verify_parameters(self) -> dict:
        """The etcd-verify-backup flow parameters of this schedule: the latest backup, decrypted with identity."""
        return self.model_dump(include={"cluster", "storage", "identity", "notify"}) | {"backup": "latest"}


class Limits(BaseModel):
    """The `[limits]` table: what every worker shares."""

    model_config = ConfigDict(extra="forbid")

    backups_at_once: int = Field(
        DEFAULT_TRANSFERS, ge=1, le=10_000, description="backups and verifications moving data at once, all clusters"
    )


class BackupsFile(BaseModel):
    """A whole schedule file: the entries and the shared limits."""

    backups: list[BackupSchedule]
    limits: Limits = Limits()


def load_schedules(path: Path, *, blocks: bool = False) -> list[BackupSchedule]:
    """Read every `[[backup]]` entry of a TOML file (and with blocks=True the blocks they name); list every problem."""
    return load_config(path, blocks=blocks).backups


def load_config(path: Path, *, blocks: bool = False) -> BackupsFile:
    """Read the whole schedule file (and with blocks=True the blocks it names); list every problem at once."""
    entries, raw_limits, problems = _read(Path(path))
    schedules: list[BackupSchedule] = []
    for i, entry in enumerate(entries, 1):
        where = f"[[backup]] #{i}" + (f" ({entry['cluster']})" if isinstance(entry.get("cluster"), str) else "")
        try:
            schedules.append(BackupSchedule(**entry))
        except ValidationError as exc:
            problems += [f"{where}: {_problem(e, BackupSchedule)}" for e in exc.errors()]
    limits = Limits()
    try:
        limits = Limits(**raw_limits)
    except ValidationError as exc:
        problems += [f"[limits]: {_problem(e, Limits)}" for e in exc.errors()]
    problems += _name_clashes(entries) + _same_target(entries)
    if blocks and entries:
        from deployments.blocks_check import check_blocks

        problems += check_blocks(entries)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{path}: {len(problems)} problem(s), nothing deployed:\n{listed}", step="config")
    return BackupsFile(backups=schedules, limits=limits)


def _read(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """The raw entries and limits of the file, and the problems of its top level."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"schedule file {path} does not exist", step="config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"schedule file {path} is not valid TOML: {exc}", step="config") from None
    problems = [f"unknown top-level key {k!r}{_closest(k, TOP_LEVEL)}" for k in data if k not in TOP_LEVEL]
    limits = data.get("limits", {})
    if not isinstance(limits, dict):
        problems.append("write the limits as a [limits] table, e.g. [limits] backups_at_once = 4")
        limits = {}
    entries = data.get("backup", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        return [], limits, [*problems, "write each backup as a [[backup]] table"]
    if not entries:
        problems.append("the file has no [[backup]] entry")
    return entries, limits, problems


def _problem(error: Any, model: type[BaseModel]) -> str:
    """One line for one validation error, with the closest valid key for an unknown one."""
    key = ".".join(map(str, error["loc"]))
    if error["type"] == "extra_forbidden":
        return f"unknown key {key!r}{_closest(key, list(model.model_fields))}"
    if error["type"] == "missing":
        return f"{key} is required"
    message = error["msg"].removeprefix("Value error, ")
    return f"{key}: {message}" if key else message


def _closest(word: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest choice, or the list of valid ones."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else f" (valid keys: {', '.join(choices)})"


def _name_clashes(entries: list[dict[str, Any]]) -> list[str]:
    """Entries that would deploy under the same name: duplicates, and a cluster's second entry without a name."""
    problems, seen = [], {}
    by_cluster: dict[str, list[int]] = {}
    for i, entry in enumerate(entries, 1):
        if isinstance(entry.get("cluster"), str):
            by_cluster.setdefault(entry["cluster"], []).append(i)
    for i, entry in enumerate(entries, 1):
        cluster, name = entry.get("cluster"), entry.get("name")
        if not isinstance(cluster, str):
            continue
        if name is None and len(by_cluster[cluster]) > 1:
            others = ", ".join(f"#{j}" for j in by_cluster[cluster] if j != i)
            problems.append(
                f"[[backup]] #{i} ({cluster}): cluster {cluster!r} has other entries ({others}); give each entry "
                f'of {cluster} its own name, e.g. name = "{cluster}-{_kind(entry)}"'
            )
            continue
        deployment = name or cluster
        if deployment in seen:
            problems.append(
                f"[[backup]] #{i} ({cluster}): name {deployment!r} is already used by [[backup]] #{seen[deployment]}"
            )
        seen.setdefault(deployment, i)
    return problems


def _same_target(entries: list[dict[str, Any]]) -> list[str]:
    """Entries backing up one cluster into one storage: their backups would get the same names at the same time."""
    problems, seen = [], {}
    for i, entry in enumerate(entries, 1):
        target = (entry.get("cluster"), entry.get("storage"))
        if not all(isinstance(t, str) for t in target):
            continue
        if target in seen:
            problems.append(
                f"[[backup]] #{i} ({target[0]}): backs up {target[0]} into {target[1]} like [[backup]] "
                f"#{seen[target]}; one entry per cluster and storage (their backups would share names and "
                "each one's retention would prune the other's)"
            )
        seen.setdefault(target, i)
    return problems


def _kind(entry: dict[str, Any]) -> str:
    """A name suffix from the storage type, e.g. 'ufile' for 'ufile-storage/prod'."""
    storage = entry.get("storage")
    return storage.split("-")[0].split("/")[0] if isinstance(storage, str) and storage else "copy"
