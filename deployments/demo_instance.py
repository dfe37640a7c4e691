"""One demo per directory: a lock held while it runs, its PID and URLs, its secrets, and requests to break it."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import time
from pathlib import Path

from cryptography.fernet import Fernet

from etcd_backup.errors import ConfigError

LOCK, INFO, SECRETS = "demo.lock", "demo.json", "secrets"
BREAK_REQUEST, BREAK_DONE = "break.request", "break.done"


class DemoInstance:
    """The demo living in `directory` (.demo in the checkout): only one process may run it at a time."""

    def __init__(self, directory: Path):
        self.dir = Path(directory).resolve()
        self._lock_fd: int | None = None

    def info(self) -> dict:
        """What the running (or last) demo wrote about itself: pid, ui, api_url."""
        try:
            return json.loads((self.dir / INFO).read_text())
        except (OSError, ValueError):
            return {}

    def running(self) -> bool:
        """True when a demo process holds this directory's lock."""
        if not (self.dir / LOCK).exists():
            return False
        fd = os.open(self.dir / LOCK, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def acquire(self) -> None:
        """Take the lock for this process, or raise ConfigError naming the demo that runs (nothing is touched)."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.dir.chmod(0o700)
        fd = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            info = self.info()
            raise ConfigError(
                f"a demo is already running in {self.dir} (PID {info.get('pid', '?')}, UI {info.get('ui', '?')}); "
                "nothing was changed. Use that one, or stop it (Ctrl-C in its terminal, or kill "
                f"{info.get('pid', '<pid>')}) before starting another",
                step="demo",
            ) from None
        self._lock_fd = fd

    def wipe(self) -> None:
        """--fresh: delete everything of earlier demos here (backups, Prefect database, secrets) but the lock."""
        for child in self.dir.iterdir():
            if child.name == LOCK:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def publish(self, **info) -> None:
        """Write this demo's PID and URLs for a second start (and --break) to find."""
        (self.dir / INFO).write_text(json.dumps({"pid": os.getpid(), **info}))

    def secret(self, name: str, make) -> str:
        """A secret kept in secrets/<name> (0600), made once and reused while the database lives."""
        folder = self.dir / SECRETS
        folder.mkdir(mode=0o700, exist_ok=True)
        path = folder / name
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(make())
        return path.read_text().strip()

    def auth_string(self) -> str:
        """'admin:<random password>' for the API's basic auth."""
        return self.secret("api-auth-string", lambda: f"admin:{secrets.token_urlsafe(18)}")

    def encryption_key(self) -> str:
        """The Fernet key that encrypts block secrets in the database (kept outside it)."""
        return self.secret("block-encryption.key", lambda: Fernet.generate_key().decode())

    def request_break(self, what: str, timeout: float = 120) -> str:
        """Ask the running demo to break its cluster (`quorum` or `member`); returns what it did."""
        if not self.running():
            raise ConfigError(f"no demo is running in {self.dir}; start it with scripts/demo.sh", step="demo")
        (self.dir / BREAK_DONE).unlink(missing_ok=True)
        (self.dir / BREAK_REQUEST).write_text(what)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.dir / BREAK_DONE
            if done.exists():
                result = done.read_text()
                done.unlink()
                return result
            time.sleep(0.5)
        raise ConfigError(f"the demo (PID {self.info().get('pid')}) did not answer within {timeout:.0f} s")

    def take_break_request(self) -> str | None:
        """The pending break request, if any (removed once read)."""
        path = self.dir / BREAK_REQUEST
        try:
            what = path.read_text().strip()
        except FileNotFoundError:
            return None
        path.unlink(missing_ok=True)
        return what

    def answer_break(self, text: str) -> None:
        """Tell the waiting `--break` what was done."""
        (self.dir / BREAK_DONE).write_text(text)
