"""Compression of the backup stream both ways: zstd (multi-threaded), gzip, the old plugin's tar.gz, none."""

from __future__ import annotations

import gzip
import os
import tarfile
import time
import zlib
from typing import Annotated, Any, BinaryIO, Literal, cast, get_args

import zstandard
from pydantic import ValidationError, ValidatorFunctionWrapHandler, WrapValidator

from etcd_backup.errors import BackupCorrupt, ConfigError
from etcd_backup.storage.base import Readable

_Names = Literal["zstd", "gzip", "tar.gz", "none"]
COMPRESSIONS: tuple[str, ...] = get_args(_Names)


def _named(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Validate a compression name with a message that lists the valid ones."""
    try:
        return handler(value)
    except ValidationError:
        raise ValueError(f"compression {value!r} is not one of {', '.join(COMPRESSIONS)}") from None


Compression = Annotated[_Names, WrapValidator(_named)]
"""A compression name as a typed parameter (flows, the schedule file): the UI shows the choices."""
ZSTD_LEVEL = 1  # on 2 cores level 3 is several times slower than the snapshot stream (bench/backup_bench.py)
ZSTD_JOB_SIZE = 2 << 20  # small jobs keep multi-threaded zstd's memory near 20 MB
DECODE_ERRORS = (zstandard.ZstdError, OSError, EOFError, zlib.error, tarfile.TarError)
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE


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
    raise unknown(compression)


def decompressor(compression: str, source: Readable) -> Readable:
    """A reader yielding the raw snapshot from a compressed source."""
    stream = cast(BinaryIO, source)  # the libraries only ever call read()
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True, closefd=False)
    if compression == "gzip":
        return gzip.GzipFile(fileobj=stream, mode="rb")
    if compression == "tar.gz":
        archive = tarfile.open(fileobj=stream, mode="r|gz")
        info = archive.next()
        if info is None:
            raise BackupCorrupt("tar archive holds no file", step="decompress")
        why = _unsafe(info)
        if why:
            raise BackupCorrupt(
                f"tar member {info.name!r} {why}: an etcd backup holds one plain file", step="decompress"
            )
        member = archive.extractfile(info)
        assert member is not None  # a regular file always has a reader
        return member
    if compression == "none":
        return source
    raise unknown(compression)


def _unsafe(info: tarfile.TarInfo) -> str | None:
    """Why a tar member cannot be an etcd snapshot (a link, a device, a path leaving the archive), or None."""
    if info.issym() or info.islnk():
        return "is a link"
    if not info.isfile():
        return "is not a regular file"
    if info.name.startswith("/") or ".." in info.name.split("/"):
        return "has a path that leaves the archive"
    return None


def cpu_count() -> int:
    """CPUs this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def unknown(compression: str) -> ConfigError:
    """The error for a compression name that is not one of COMPRESSIONS."""
    return ConfigError(f"unknown compression {compression!r}; use one of {', '.join(COMPRESSIONS)}")
