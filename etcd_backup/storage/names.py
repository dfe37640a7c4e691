"""Object keys: validation, joining under a root, and the temporary names partial writes use."""

from __future__ import annotations

import posixpath
import secrets

from etcd_backup.errors import ConfigError

TEMP_MARK = ".tmp-"


def check_key(key: str) -> str:
    """Return key if it is a clean relative '/'-separated name, else raise ConfigError."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key or "\0" in key:
        raise ConfigError(
            f"invalid object key {key!r}: use a relative name like 'cluster/backup.db.zst'", step="storage"
        )
    if is_temp(parts[-1]):
        raise ConfigError(f"invalid object key {key!r}: the name looks like a temporary upload", step="storage")
    return key


def clean_prefix(prefix: str) -> str:
    """Normalise a root prefix to '' or 'a/b/' (no leading slash, one trailing slash)."""
    prefix = prefix.strip("/")
    return prefix + "/" if prefix else ""


def temp_name(name: str) -> str:
    """A hidden, unique sibling name for writing name before the final rename."""
    return f".{name}{TEMP_MARK}{secrets.token_hex(6)}"


def is_temp(name: str) -> bool:
    """True for a base name made by temp_name: such files are never listed."""
    return name.startswith(".") and TEMP_MARK in name


def list_start(prefix: str) -> str:
    """The deepest directory that can hold keys starting with prefix ('' for the root)."""
    return posixpath.dirname(prefix) if "/" in prefix else ""
