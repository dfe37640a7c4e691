"""The backup schedule file (`backups.toml`): one entry per cluster, checked before anything is deployed."""

from __future__ import annotations

import tomllib
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, ValidationError, field_validator

from etcd_backup.codecs import COMPRESSIONS
from etcd_backup.errors import ConfigError


def check_cron(expr: str) -> str:
    """Accept a five-field crontab expression (as in the runbook) or raise ConfigError."""
    from prefect._internal.schemas.validators import validate_cron_string

    fields = expr.split()
    if len(fields) != 5:
        raise ConfigError(
            f"cron {expr!r} has {len(fields)} fields; use the five crontab fields "
            "'<minute> <hour> <day> <month> <weekday>', e.g. '0 0 * * *'",
            step="schedule",
        )
    try:
        validate_cron_string(expr)
    except ValueError as exc:
        raise ConfigError(f"cron {expr!r} is not valid: {exc}", step="schedule") from None
    return expr


class BackupSchedule(BaseModel):
    """One scheduled backup: which cluster, where to, when and how many to keep."""

    cluster: str = Field(description="EtcdCluster block name")
    storage: str = Field(description="storage block as '<block-type-slug>/<name>'")
    cron: str = "0 0 * * *"
    timezone: str = "UTC"
    keep: int = Field(7, ge=1)
    compression: str = "zstd"
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

    @field_validator("compression")
    @classmethod
    def _compression(cls, v: str) -> str:
        if v not in COMPRESSIONS:
            raise ValueError(f"compression {v!r} is not one of {', '.join(COMPRESSIONS)}")
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
