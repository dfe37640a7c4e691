"""Streaming helpers: a reader that translates library I/O errors, full reads, and a bounded pipe between threads."""

from __future__ import annotations

import io
import queue
from collections.abc import Callable


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


class Pipe:
    """A bounded in-memory pipe between one writing and one reading thread; errors cross it."""

    def __init__(self, max_chunks: int = 16):
        self._queue: queue.Queue[bytes | None] = queue.Queue(max_chunks)
        self._buffer = memoryview(b"")
        self._eof = False
        self._error: BaseException | None = None
        self._reader_gone = False

    def write(self, data) -> int:
        """Queue a copy of data; blocks while the pipe is full, raises if the reader gave up."""
        if not len(data):
            return 0
        chunk = bytes(data)
        while True:
            if self._reader_gone:
                raise BrokenPipeError("the reading side of the pipe stopped")
            try:
                self._queue.put(chunk, timeout=0.2)
                return len(chunk)
            except queue.Full:
                continue

    def flush(self) -> None:
        """Nothing to flush; present for file-like callers."""

    def close(self) -> None:
        """Signal end of data to the reader."""
        self._put_end()

    def abort(self, error: BaseException) -> None:
        """Make the reader raise error instead of seeing end of data."""
        self._error = error
        self._put_end()

    def _put_end(self) -> None:
        while not self._reader_gone:
            try:
                self._queue.put(None, timeout=0.2)
                return
            except queue.Full:
                continue

    def stop_reading(self) -> None:
        """Called by the reader when it will read no more; unblocks the writer."""
        self._reader_gone = True
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def readable(self) -> bool:
        """Always True."""
        return True

    def read(self, size: int = -1) -> bytes:
        """Read up to size bytes (all remaining when size < 0); b'' at the end."""
        if size is None or size < 0:
            parts = []
            while part := self.read(1 << 20):
                parts.append(part)
            return b"".join(parts)
        while not self._buffer and not self._eof:
            item = self._queue.get()
            if item is None:
                self._eof = True
            elif len(item) <= size:
                return item  # the common case: hand the chunk on without copying
            else:
                self._buffer = memoryview(item)
        if self._eof and not self._buffer and self._error is not None:
            raise self._error
        out = bytes(self._buffer[:size])
        self._buffer = self._buffer[size:]
        return out

    def readinto(self, target) -> int:
        """Read into a writable buffer."""
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)
