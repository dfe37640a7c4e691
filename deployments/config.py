"""The backup schedule file (`backups.toml`): every entry checked, every problem listed, before anything is deployed."""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prefect.schedules import Cron
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from etcd_backup.compression import Compression
from etcd_backup.encryption import parse_recipients
from etcd_backup.errors import ConfigError
from etcd_backup.retention import Retention

CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day", 1, 31), ("month", 1, 12), ("weekday", 0, 7))
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
TOP_LEVEL = ("backup",)


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
    identity: str | None = Field(None, description="AgeIdentity block the restore deployment decrypts with")

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        try:
            return check_cron(v)
        except ConfigError as exc:
            raise ValueError(exc.message) from None

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


def load_schedules(path: Path, *, blocks: bool = False) -> list[BackupSchedule]:
    """Read every `[[backup]]` entry of a TOML file (and with blocks=True the blocks they name); list every problem."""
    entries, problems = _read(Path(path))
    schedules: list[BackupSchedule] = []
    for i, entry in enumerate(entries, 1):
        where = f"[[backup]] #{i}" + (f" ({entry['cluster']})" if isinstance(entry.get("cluster"), str) else "")
        try:
            schedules.append(BackupSchedule(**entry))
        except ValidationError as exc:
            problems += [f"{where}: {_problem(e)}" for e in exc.errors()]
    problems += _name_clashes(entries)
    if blocks and entries:
        from deployments.blocks_check import check_blocks

        problems += check_blocks(entries)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{path}: {len(problems)} problem(s), nothing deployed:\n{listed}", step="config")
    return schedules


def _read(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The raw entries of the file, and the problems of its top level."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"schedule file {path} does not exist", step="config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"schedule file {path} is not valid TOML: {exc}", step="config") from None
    problems = [f"unknown top-level key {k!r}{_closest(k, TOP_LEVEL)}" for k in data if k not in TOP_LEVEL]
    entries = data.get("backup", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        return [], [*problems, "write each backup as a [[backup]] table"]
    if not entries:
        problems.append("the file has no [[backup]] entry")
    return entries, problems


def _problem(error: Any) -> str:
    """One line for one validation error, with the closest valid key for an unknown one."""
    key = ".".join(map(str, error["loc"]))
    if error["type"] == "extra_forbidden":
        return f"unknown key {key!r}{_closest(key, list(BackupSchedule.model_fields))}"
    if error["type"] == "missing":
        return f"{key} is required"
    return f"{key}: {error['msg'].removeprefix('Value error, ')}"


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


def _kind(entry: dict[str, Any]) -> str:
    """A name suffix from the storage type, e.g. 'ufile' for 'ufile-storage/prod'."""
    storage = entry.get("storage")
    return storage.split("-")[0].split("/")[0] if isinstance(storage, str) and storage else "copy"
