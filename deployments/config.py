"""The backup schedule file (`backups.toml`): one entry per cluster, checked before anything is deployed."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prefect.schedules import Cron
from pydantic import BaseModel, Field, ValidationError, field_validator

from etcd_backup.compression import Compression
from etcd_backup.errors import ConfigError
from etcd_backup.retention import Retention

CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day", 1, 31), ("month", 1, 12), ("weekday", 0, 7))


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
                where = f"step /{step} of the {name} field is outside {low}-{high}"
                raise ConfigError(f"cron {expr!r}: {where}", step="schedule")
    try:
        Cron(expr, timezone=timezone)
    except ValueError as exc:
        raise ConfigError(f"cron {expr!r} is not valid: {exc}", step="schedule") from None
    return expr


class BackupSchedule(BaseModel):
    """One scheduled backup: which cluster, where to, when and how many to keep."""

    cluster: str = Field(description="EtcdCluster block name")
    storage: str = Field(description="storage block as '<block-type-slug>/<name>'")
    cron: str = "0 0 * * *"
    timezone: str = "UTC"
    keep: Retention = 7
    compression: Compression = "zstd"
    encrypt_to: list[str] = []
    notify: str | None = Field(None, description="notification block as '<block-type-slug>/<name>'")

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        return check_cron(v)

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

    def parameters(self) -> dict:
        """The etcd-backup flow parameters of this schedule (block names only, never secrets)."""
        return self.model_dump(include={"cluster", "storage", "keep", "compression", "encrypt_to", "notify"})


def load_schedules(path: Path) -> list[BackupSchedule]:
    """Read and check every `[[backup]]` entry of a TOML file; any error names the entry."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"schedule file {path} does not exist", step="config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"schedule file {path} is not valid TOML: {exc}", step="config") from None
    entries = data.get("backup", [])
    if not entries:
        raise ConfigError(f"schedule file {path} has no [[backup]] entry", step="config")
    schedules = []
    for i, entry in enumerate(entries, 1):
        try:
            schedules.append(BackupSchedule(**entry))
        except ConfigError as exc:
            raise ConfigError(f"[[backup]] #{i} in {path}: {exc.message}", step="config") from None
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"[[backup]] #{i} in {path}: {problems}", step="config") from None
    return schedules
