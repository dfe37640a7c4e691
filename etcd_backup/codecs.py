"""Streaming stages: bounded pipes, compression (zstd, gzip, tar.gz, none) and age encryption, both ways."""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
import threading
import time
import zlib
from collections.abc import Iterable
from typing import BinaryIO

import pyrage
import zstandard

from etcd_backup.errors import BackupCorrupt, ConfigError
from etcd_backup.storage.stream import Pipe

COMPRESSIONS = ("zstd", "gzip", "tar.gz", "none")
ZSTD_LEVEL = 1  # on 2 cores level 3 is several times slower than the snapshot stream (bench/backup_bench.py)
ZSTD_JOB_SIZE = 2 << 20  # small jobs keep multi-threaded zstd's memory near 20 MB
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE


class HashingReader:
    """Read from source while counting bytes and computing their sha256."""

    def __init__(self, source: BinaryIO):
        self.source = source
        self.size = 0
        self._hash = hashlib.sha256()

    def readable(self) -> bool:
        """Always True."""
        return True

    def read(self, size: int = -1) -> bytes:
        """Read, hash and count."""
        data = self.source.read(size)
        self._hash.update(data)
        self.size += len(data)
        return data

    def readinto(self, target) -> int:
        """Read into a writable buffer."""
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)

    @property
    def sha256(self) -> str:
        """Hex sha256 of everything read."""
        return self._hash.hexdigest()


class _Passthrough:
    """compression "none": bytes go to sink unchanged."""

    def __init__(self, sink):
        self.sink = sink

    def write(self, data) -> int:
        return self.sink.write(data) or len(data)

    def close(self) -> None:
        pass


class _TarGzWriter:
    """A gzip-compressed tar holding one member whose size is known up front."""

    def __init__(self, sink, member: str, size: int, level: int):
        self.gz = gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=level, mtime=int(time.time()), filename="")
        self.expected, self.written = size, 0
        info = tarfile.TarInfo(member)
        info.size, info.mode, info.mtime = size, 0o600, int(time.time())
        self.gz.write(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))

    def write(self, data) -> int:
        self.written += len(data)
        if self.written > self.expected:
            raise BackupCorrupt(f"snapshot is longer than the announced {self.expected} bytes", step="tar")
        return self.gz.write(data)

    def close(self) -> None:
        if self.written != self.expected:
            raise BackupCorrupt(f"snapshot has {self.written} bytes, announced {self.expected}", step="tar")
        used = _BLOCK + self.written + (-self.written % _BLOCK) + 2 * _BLOCK
        self.gz.write(b"\0" * ((-self.written % _BLOCK) + 2 * _BLOCK + (-used % _RECORD)))
        self.gz.close()


def compressor(compression: str, sink, *, raw_size: int, member: str = "snapshot.db", level: int | None = None):
    """A writer that compresses into sink; call close() on it at the end (sink stays open)."""
    if compression == "zstd":
        params = zstandard.ZstdCompressionParameters.from_level(
            level or ZSTD_LEVEL, threads=cpu_count(), job_size=ZSTD_JOB_SIZE, write_checksum=True
        )
        return zstandard.ZstdCompressor(compression_params=params).stream_writer(sink, size=raw_size, closefd=False)
    if compression == "gzip":
        return gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=level or 6, mtime=int(time.time()), filename="")
    if compression == "tar.gz":
        return _TarGzWriter(sink, member, raw_size, level or 6)
    if compression == "none":
        return _Passthrough(sink)
    raise ConfigError(f"unknown compression {compression!r}; use one of {', '.join(COMPRESSIONS)}")


def decompressor(compression: str, source: BinaryIO) -> BinaryIO:
    """A reader yielding the raw snapshot from a compressed source."""
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=True, closefd=False)
    if compression == "gzip":
        return gzip.GzipFile(fileobj=source, mode="rb")
    if compression == "tar.gz":
        archive = tarfile.open(fileobj=source, mode="r|gz")
        for info in archive:
            if info.isfile():
                return archive.extractfile(info)
        raise BackupCorrupt("tar archive holds no file", step="decompress")
    if compression == "none":
        return source
    raise ConfigError(f"unknown compression {compression!r}; use one of {', '.join(COMPRESSIONS)}")


DECODE_ERRORS = (zstandard.ZstdError, OSError, EOFError, zlib.error, tarfile.TarError, pyrage.DecryptError)


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


def decrypting_reader(source: BinaryIO, identities: list) -> Pipe:
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


def cpu_count() -> int:
    """CPUs this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
