"""A directory on an SSH server, over SFTP with a verified host key."""

from __future__ import annotations

import builtins
import errno
import posixpath
import shutil
import socket
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import paramiko

from etcd_backup import ssh
from etcd_backup.errors import NodeError, NotFound, StorageError, TransientStorageError
from etcd_backup.storage.base import Closing, ObjectInfo, Readable, ReadStream
from etcd_backup.storage.names import check_key, is_temp, list_start, temp_name
from etcd_backup.storage.stream import Pipe, Reader

WINDOW = 64 * 1024 * 1024
PACKET = 256 * 1024
CHUNK = 1024 * 1024
READ_AHEAD = 4 * 1024 * 1024  # one window of pipelined reads; at most ~3 windows are held in memory
NETWORK_ERRORS = (paramiko.SSHException, paramiko.SFTPError, EOFError, OSError)
STALE_TEMP = 6 * 3600  # a temp file nobody wrote to for this long (the longest backup run) was left by a dead upload
LOW_SPACE = 4 * CHUNK  # a write the server fails without a reason while less is free: the disk is full


class SFTPStorage(Closing):
    """Objects as files under directory on host: written to a temp name, then posix-renamed."""

    kind = "sftp"

    def __init__(
        self,
        host: str,
        port: int = 22,
        user: str = "root",
        directory: str = ".",
        *,
        private_key: str | None = None,
        password: str | None = None,
        known_hosts: str | None = None,
        host_fingerprint: str | None = None,
        timeout: float = 30,
        stale_after: float = STALE_TEMP,
    ):
        self.host, self.port, self.user = host, port, user
        self.stale_after = stale_after
        self._leftovers: set[str] = set()  # temp files a failed put of ours could not remove
        self.directory = directory.rstrip("/") or "/"
        self._auth: dict[str, Any] = dict(
            private_key=private_key,
            password=password,
            known_hosts=known_hosts,
            host_fingerprint=host_fingerprint,
            timeout=timeout,
        )
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.RLock()

    def describe(self) -> str:
        """'sftp://user@host:port/directory'."""
        return (
            f"sftp://{self.user}@{self.host}:{self.port}{'' if self.directory.startswith('/') else '/'}{self.directory}"
        )

    def put(self, key: str, source: Readable) -> ObjectInfo:
        """Stream source to a temp file beside key (mode 0600, pipelined), then rename it into place.

        Temp files that failed puts left in the directory (the link dropped) are removed first:
        this storage's own at once, anyone's once nobody wrote to them for stale_after seconds.
        """
        path = self._path(key)
        directory = posixpath.dirname(path)
        tmp = posixpath.join(directory, temp_name(posixpath.basename(path)))
        sftp = self._session("put")
        try:
            self._sweep(sftp, directory)
            self._makedirs(sftp, directory)
            with sftp.open(tmp, "wbx") as out:
                out.chmod(0o600)
                out.set_pipelined(True)
                shutil.copyfileobj(source, out, CHUNK)
            sftp.posix_rename(tmp, path)
            return self.stat(key)
        except BaseException as exc:
            error = self._put_error(sftp, exc, directory) if isinstance(exc, NETWORK_ERRORS) else None
            self._discard(sftp, tmp)
            if error is not None:
                raise error from None
            raise

    def _sweep(self, sftp: paramiko.SFTPClient, directory: str) -> None:
        """Remove the temp files in directory that failed puts left (see put)."""
        try:
            entries = sftp.listdir_attr(directory)
        except FileNotFoundError:
            return
        now = time.time()
        for entry in entries:
            path = posixpath.join(directory, entry.filename)
            stale = now - (entry.st_mtime or now) > self.stale_after
            if is_temp(entry.filename) and (path in self._leftovers or stale):
                try:
                    sftp.remove(path)
                except OSError:
                    continue  # another writer's, or gone already
                self._leftovers.discard(path)

    def _put_error(self, sftp: paramiko.SFTPClient, exc: BaseException, directory: str) -> StorageError:
        """The error of a failed put; SFTP's reasonless 'Failure' with (almost) no space left is a full disk."""
        if isinstance(exc, OSError) and exc.errno is None and "Failure" in str(exc):
            free = self._free_bytes(sftp, directory)
            if free is not None and free < LOW_SPACE:
                return StorageError(
                    f"{self.describe()}: no space left on {self.host} for {directory} ({free} bytes free; "
                    "a full disk or a quota): free space or prune old backups there",
                    step="sftp put",
                )
        return self._error(exc, "put", directory)

    def _free_bytes(self, sftp: paramiko.SFTPClient, directory: str) -> int | None:
        """Bytes available to the user in directory's filesystem (OpenSSH's statvfs extension), or None."""
        try:
            # paramiko has no statvfs call; the extension's reply is 11 uint64s (f_bsize, f_frsize, ..., f_bavail, ...)
            _, msg = sftp._request(paramiko.sftp.CMD_EXTENDED, "statvfs@openssh.com", directory)
            fields = [msg.get_int64() for _ in range(5)] if msg is not None else []
        except (*NETWORK_ERRORS, AttributeError):
            return None
        return fields[1] * fields[4] if len(fields) == 5 else None

    def open(self, key: str) -> ReadStream:
        """Stream key with pipelined read-ahead in bounded windows (never the whole file in memory), or NotFound."""
        path = self._path(key)
        # The read-ahead thread gets an SFTP channel of its own: paramiko's SFTPClient cannot serve
        # requests from two threads at once, and this storage's other calls go on meanwhile.
        transport = self._session("open").get_channel().get_transport()
        sftp = None
        try:
            sftp = paramiko.SFTPClient.from_transport(transport, window_size=WINDOW, max_packet_size=PACKET)
            remote = sftp.open(path, "rb")
            size = remote.stat().st_size
        except NETWORK_ERRORS as exc:
            if sftp is not None:
                sftp.close()
            raise self._error(exc, "open", path) from None
        pipe = Pipe(max_chunks=2)
        threading.Thread(
            target=self._read_ahead, args=(sftp, remote, size, pipe, path), daemon=True, name=f"sftp-read {path}"
        ).start()
        return Reader(pipe, lambda exc: self._error(exc, "read", path), NETWORK_ERRORS, on_close=pipe.stop_reading)

    def _read_ahead(
        self, sftp: paramiko.SFTPClient, remote: paramiko.SFTPFile, size: int, pipe: Pipe, path: str
    ) -> None:
        """Fetch the file window by window (each window's reads pipelined) into the bounded pipe."""
        try:
            with sftp, remote:
                for start in range(0, size, READ_AHEAD):
                    end = min(size, start + READ_AHEAD)
                    chunks = [
                        (o, min(remote.MAX_REQUEST_SIZE, end - o)) for o in range(start, end, remote.MAX_REQUEST_SIZE)
                    ]
                    pipe.write(b"".join(remote.readv(chunks)))
            pipe.close()
        except BrokenPipeError:
            pass  # the reader closed early
        except NETWORK_ERRORS as exc:
            pipe.abort(self._error(exc, "read", path))

    def stat(self, key: str) -> ObjectInfo:
        """Size and time of key, or NotFound."""
        path = self._path(key)
        try:
            attrs = self._session("stat").stat(path)
        except NETWORK_ERRORS as exc:
            raise self._error(exc, "stat", path) from None
        if not stat.S_ISREG(attrs.st_mode or 0):
            raise NotFound(f"{self.describe()}: {path} is not a file", step="sftp stat")
        return ObjectInfo(key, attrs.st_size, datetime.fromtimestamp(attrs.st_mtime, UTC))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Files under prefix (temp files skipped), sorted by key."""
        sftp = self._session("list")
        found: list[ObjectInfo] = []
        try:
            self._walk(sftp, list_start(prefix), prefix, found)
        except NETWORK_ERRORS as exc:
            raise self._error(exc, "list", posixpath.join(self.directory, prefix)) from None
        yield from sorted(found, key=lambda info: info.key)

    def delete(self, keys: Iterable[str]) -> None:
        """Remove files; missing ones are ignored."""
        sftp = self._session("delete")
        for key in keys:
            path = self._path(key)
            try:
                sftp.remove(path)
            except FileNotFoundError:
                continue
            except NETWORK_ERRORS as exc:
                raise self._error(exc, "delete", path) from None

    def close(self) -> None:
        """Close the SFTP session and the SSH connection."""
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client = self._sftp = None

    def _path(self, key: str) -> str:
        return posixpath.join(self.directory, check_key(key))

    def _session(self, op: str) -> paramiko.SFTPClient:
        """The open SFTP session, (re)connecting when there is none or it died."""
        with self._lock:
            if self._sftp is not None and self._alive():
                return self._sftp
            if self._client is not None:
                self._client.close()
            try:
                self._client = ssh.connect(self.host, self.port, self.user, **self._auth)
                self._sftp = paramiko.SFTPClient.from_transport(
                    self._client.get_transport(), window_size=WINDOW, max_packet_size=PACKET
                )
            except NodeError as exc:
                self._client = self._sftp = None
                cls = TransientStorageError if exc.transient else StorageError
                raise cls(f"{self.describe()}: {exc.message}", step=f"sftp {op}") from None
            except NETWORK_ERRORS as exc:
                self._client = self._sftp = None
                raise self._error(exc, op, self.directory) from None
            return self._sftp

    def _makedirs(self, sftp: paramiko.SFTPClient, path: str) -> None:
        """mkdir -p over SFTP."""
        missing = []
        while path not in ("", "/", "."):
            try:
                if stat.S_ISDIR(sftp.stat(path).st_mode or 0):
                    break
            except FileNotFoundError:
                missing.append(path)
                path = posixpath.dirname(path)
                continue
            raise StorageError(f"{self.describe()}: {path} exists and is not a directory", step="sftp put")
        for directory in reversed(missing):
            try:
                sftp.mkdir(directory, 0o700)
            except OSError as exc:
                if not self._is_dir(sftp, directory):  # lost a race with another writer is fine
                    raise exc

    def _is_dir(self, sftp: paramiko.SFTPClient, path: str) -> bool:
        try:
            return stat.S_ISDIR(sftp.stat(path).st_mode or 0)
        except OSError:
            return False

    def _walk(self, sftp: paramiko.SFTPClient, rel: str, prefix: str, found: builtins.list[ObjectInfo]) -> None:
        try:
            entries = sftp.listdir_attr(posixpath.join(self.directory, rel))
        except FileNotFoundError:
            return
        for entry in entries:
            key = posixpath.join(rel, entry.filename) if rel else entry.filename
            if stat.S_ISDIR(entry.st_mode or 0):
                if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                    self._walk(sftp, key, prefix, found)
            elif stat.S_ISREG(entry.st_mode or 0) and not is_temp(entry.filename) and key.startswith(prefix):
                found.append(ObjectInfo(key, entry.st_size, datetime.fromtimestamp(entry.st_mtime, UTC)))

    def _discard(self, sftp: paramiko.SFTPClient, tmp: str) -> None:
        """Best effort removal of a temp file after a failed put; when the link is gone, the next put removes it."""
        try:
            sftp.remove(tmp)
        except FileNotFoundError:
            pass
        except (paramiko.SSHException, OSError, EOFError):
            self._leftovers.add(tmp)

    def _alive(self) -> bool:
        transport = self._client.get_transport() if self._client else None
        return transport is not None and transport.is_active()

    def _error(self, exc: BaseException, op: str, path: str) -> StorageError:
        """Map SFTP/SSH failures: missing -> NotFound, no rights -> StorageError, link -> transient."""
        step, where = f"sftp {op}", self.describe()
        if isinstance(exc, FileNotFoundError) or getattr(exc, "errno", None) == errno.ENOENT:
            return NotFound(f"{where}: {path} does not exist", step=step)
        if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EACCES:
            return StorageError(f"{where}: permission denied for {self.user} on {self.host}:{path}", step=step)
        if (
            isinstance(exc, (paramiko.SSHException, EOFError, ConnectionError, TimeoutError, socket.timeout))
            or not self._alive()
        ):
            self.close()  # the next call reconnects
            return TransientStorageError(
                f"{where}: connection to {self.host}:{self.port} lost during {op} of {path}: "
                f"{exc.__class__.__name__}: {exc}",
                step=step,
            )
        return StorageError(f"{where}: {op} of {path} failed: {exc}", step=step)
