"""The verified snapshot on its way to the nodes: compressed once and fanned out to every node's upload at once.

Every node's first upload joins one shared stream (one read of the file, one
compression); a node that joins after the stream started, or uploads again after an
error, reads a stream of its own. Memory stays bounded: each node's queue holds at most
`depth` chunks, and a node whose upload stopped is dropped from the shared stream.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

import zstandard

CHUNK = 1 << 20
CODECS = ("zstd", "raw")


def chunks(path: str, codec: str, chunk: int = CHUNK) -> Iterator[bytes]:
    """The file's bytes encoded for the wire (zstd level 1 on two threads with a content checksum, or raw)."""
    zstd = zstandard.ZstdCompressor(level=1, threads=2, write_checksum=True) if codec == "zstd" else None
    compressor = zstd.compressobj() if zstd else None
    with open(path, "rb") as f:
        while data := f.read(chunk):
            out = compressor.compress(data) if compressor else data
            if out:
                yield out
    if compressor:
        yield compressor.flush()


class _Reader:
    """A readable over chunks from a queue (shared stream) or an iterator (own stream); close() leaves the stream."""

    def __init__(self, source: queue.Queue | Iterator[bytes]):
        self._source = source
        self._buf = b""
        self._eof = False
        self.closed = threading.Event()

    def _next(self) -> bytes | None:
        if isinstance(self._source, queue.Queue):
            return self._source.get()
        return next(self._source, None)

    def read(self, n: int = -1) -> bytes:
        """Up to n bytes (all that is left when n < 0); b"" at the end."""
        while not self._eof and (n < 0 or len(self._buf) < n):
            data = self._next()
            if data is None:
                self._eof = True
            else:
                self._buf += data
        data, self._buf = (self._buf, b"") if n < 0 else (self._buf[:n], self._buf[n:])
        return data

    def close(self) -> None:
        """Leave the stream: the shared producer stops feeding this reader."""
        self.closed.set()


class SnapshotFeed:
    """Hands each node a reader of the wire-encoded snapshot; first uploads share one stream."""

    def __init__(self, path: str, codec: str, nodes: Iterable[str], *, join_wait: float = 5.0, depth: int = 8):
        if codec not in CODECS:
            raise ValueError(f"unknown wire codec {codec!r}")
        self.path, self.codec = path, codec
        self._expected = set(nodes)
        self._joined: dict[str, tuple[_Reader, queue.Queue]] = {}
        self._started = False
        self._depth, self._join_wait = depth, join_wait
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def open(self, node: str) -> _Reader:
        """A reader for node's upload: the shared stream on its first upload (if still open), else its own."""
        with self._lock:
            if self._started or node not in self._expected or node in self._joined:
                return _Reader(chunks(self.path, self.codec))
            q: queue.Queue = queue.Queue(maxsize=self._depth)
            reader = _Reader(q)
            self._joined[node] = (reader, q)
            if len(self._joined) == len(self._expected):
                self._start()
            elif self._timer is None:
                self._timer = threading.Timer(self._join_wait, self._start_locked)
                self._timer.daemon = True
                self._timer.start()
            return reader

    def _start_locked(self) -> None:
        with self._lock:
            self._start()

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        if self._timer is not None:
            self._timer.cancel()
        consumers = list(self._joined.values())
        threading.Thread(target=self._produce, args=(consumers,), name="snapshot-feed", daemon=True).start()

    def _produce(self, consumers: list[tuple[_Reader, queue.Queue]]) -> None:
        try:
            for data in chunks(self.path, self.codec):
                for reader, q in consumers:
                    _put(reader, q, data)
                if all(reader.closed.is_set() for reader, _ in consumers):
                    return
        finally:
            for reader, q in consumers:
                _put(reader, q, None)


def _put(reader: _Reader, q: queue.Queue, data: bytes | None) -> None:
    """Queue data for a reader unless it left the stream (never blocks on a reader that stopped)."""
    while not reader.closed.is_set():
        try:
            q.put(data, timeout=0.5)
            return
        except queue.Full:
            continue
