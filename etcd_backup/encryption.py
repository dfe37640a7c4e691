"""age encryption of the backup stream both ways, and parsing recipients and identities."""

from __future__ import annotations

import threading
from collections.abc import Iterable

import pyrage

from etcd_backup.errors import BackupCorrupt, ConfigError
from etcd_backup.storage.base import Readable
from etcd_backup.storage.stream import Pipe

DECRYPT_ERRORS = (pyrage.DecryptError,)


def parse_recipients(recipients: Iterable[str]) -> list:
    """age recipients from public keys: 'age1...' or 'ssh-ed25519 ...'/'ssh-rsa ...' lines."""
    parsed = []
    for text in recipients:
        text = text.strip()
        try:
            if text.startswith("age1"):
                parsed.append(pyrage.x25519.Recipient.from_str(text))
            elif text.startswith("ssh-"):
                parsed.append(pyrage.ssh.Recipient.from_str(text))
            else:
                raise ValueError
        except (ValueError, pyrage.RecipientError):
            raise ConfigError(f"not an age or ssh public key: {text[:24]!r}...", step="encrypt") from None
    return parsed


def parse_identities(identities: Iterable[str | bytes]) -> list:
    """age identities from key texts: 'AGE-SECRET-KEY-1...' lines (age-keygen files) or SSH private keys."""
    parsed = []
    for item in identities:
        text = item.decode() if isinstance(item, bytes) else item
        try:
            if "PRIVATE KEY" in text:
                parsed.append(pyrage.ssh.Identity.from_buffer(text.encode()))
                continue
            keys = [line.strip() for line in text.splitlines() if line.strip().startswith("AGE-SECRET-KEY-")]
            if not keys:
                raise ValueError
            parsed.extend(pyrage.x25519.Identity.from_str(key) for key in keys)
        except (ValueError, pyrage.IdentityError):
            raise ConfigError(
                "an identity is neither an age secret key nor an SSH private key", step="decrypt"
            ) from None
    return parsed


class Encryptor:
    """A writer whose bytes a thread age-encrypts into sink (pyrage pulls them from a bounded pipe)."""

    def __init__(self, sink, recipients: list):
        self._plain = Pipe()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(sink, recipients), name="age-encrypt", daemon=True)
        self._thread.start()

    def _run(self, sink, recipients: list) -> None:
        try:
            pyrage.encrypt_io(self._plain, sink, recipients)
        except BaseException as exc:  # noqa: BLE001 - raised again by close()
            self._error = exc
        finally:
            self._plain.stop_reading()

    def write(self, data) -> int:
        """Hand data to the encrypting thread (BrokenPipeError if it failed: close() tells why)."""
        return self._plain.write(data)

    def close(self) -> None:
        """Finish the age stream; raise the encrypting thread's error, if any."""
        self._plain.close()
        self._thread.join()
        if self._error is not None:
            raise self._error


def decrypting_reader(source: Readable, identities: list) -> Pipe:
    """A reader of source's age-decrypted bytes (a thread decrypts into a bounded pipe)."""
    out = Pipe()

    def decrypt():
        try:
            pyrage.decrypt_io(source, out, identities)
            out.close()
        except pyrage.DecryptError:
            out.abort(BackupCorrupt("cannot decrypt: no matching identity, or the object is damaged", step="decrypt"))
        except BaseException as exc:  # noqa: BLE001 - handed to the reading side
            out.abort(exc)

    threading.Thread(target=decrypt, name="age-decrypt", daemon=True).start()
    return out
