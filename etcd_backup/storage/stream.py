"""A streaming reader that turns a library's I/O failures into storage errors."""

from __future__ import annotations

import io
from typing import Callable


class Reader(io.RawIOBase):
    """Read from a library stream; errors go through translate (an exception -> StorageError)."""

    def __init__(self, raw, translate: Callable[[BaseException], BaseException], errors: tuple, on_close=None):
        self._raw = raw
        self._translate = translate
        self._errors = errors
        self._on_close = on_close

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self._raw.read(len(buffer))
        except self._errors as exc:
            raise self._translate(exc) from None
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        try:
            return self._raw.read(size)
        except self._errors as exc:
            raise self._translate(exc) from None

    def close(self) -> None:
        if not self.closed:
            try:
                self._raw.close()
            except self._errors:
                pass
            finally:
                if self._on_close:
                    self._on_close()
        super().close()


class FullReads:
    """Wrap a stream so that read(n) returns n bytes unless the stream ends (s3transfer relies on it)."""

    def __init__(self, source):
        self._source = source

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self._source.read()
        chunks, got = [], 0
        while got < size:
            chunk = self._source.read(size - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
