"""One small error hierarchy; every message names the step and, where known, the node."""


class EtcdBackupError(Exception):
    """Base of every error this project raises on purpose."""

    transient = False

    def __init__(self, message: str, *, step: str | None = None, node: str | None = None):
        self.message = message
        self.step = step
        self.node = node
        super().__init__(str(self))

    def __str__(self) -> str:
        where = " on ".join(p for p in (self.step, self.node) if p)
        return f"[{where}] {self.message}" if where else self.message


class ConfigError(EtcdBackupError):
    """Bad input from the user: parameters, block fields, a cron expression."""


class StorageError(EtcdBackupError):
    """A storage backend failed permanently (bad credentials, no such bucket, no rights)."""


class TransientStorageError(StorageError):
    """A storage backend failed in a way a retry may fix (timeout, 5xx, dropped link)."""

    transient = True


class NotFound(StorageError):
    """The object asked for does not exist."""


class EtcdUnavailable(EtcdBackupError):
    """No etcd member answered well enough for the step."""

    transient = True


class EtcdTLSRefused(EtcdUnavailable):
    """TLS with a member failed (wrong CA, expired or foreign client certificate): a retry won't help."""

    transient = False


class BackupCorrupt(EtcdBackupError):
    """A backup failed its integrity checks or is not a backup of this cluster."""


class NodeError(EtcdBackupError):
    """A command or file transfer on a master node failed."""


class RestoreRefused(EtcdBackupError):
    """A restore was refused before anything changed (wrong case, failed check, no confirmation)."""


def is_transient(exc: BaseException) -> bool:
    """True when a retry may fix the error."""
    return bool(getattr(exc, "transient", False))
