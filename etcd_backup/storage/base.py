"""The Storage protocol every backend implements, with its rules in the docstrings."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key (relative to the backend's root), size in bytes and time."""

    key: str
    size: int
    modified: datetime


class Readable(Protocol):
    """Anything with read(n) -> bytes (files, pipes, decoders, network streams)."""

    def read(self, size: int = -1, /) -> bytes:
        """Up to size bytes; b"" at the end."""
        ...


class ReadStream(Readable, Protocol):
    """A readable that is closed after use (`with storage.open(key) as f:`)."""

    def close(self) -> None:
        """Release the stream."""
        ...

    def __enter__(self) -> Any: ...

    def __exit__(self, kind: Any, exc: Any, tb: Any, /) -> Any: ...


@runtime_checkable
class Storage(Protocol):
    """A flat key space of immutable objects under one root (bucket+prefix, directory).

    Rules every backend follows:
    - keys use "/" as separator and are relative to the backend's root;
    - `put` streams from a readable without holding the object in memory, and the
      object becomes visible only when complete (multipart/temp name + rename);
      a failed `put` leaves no visible object;
    - `open` streams; a missing object raises NotFound (from `open` or `stat`);
    - `list(prefix)` yields every complete object under prefix; a missing prefix lists
      empty; temporary/partial names are never listed;
    - `delete(keys)` removes what exists; missing objects are fine;
    - failures raise TransientStorageError when a retry may help, StorageError
      otherwise, with a message that names the backend and never a secret.
    """

    def describe(self) -> str:
        """A human description of where objects go, e.g. 's3://bucket/prefix'."""

    def put(self, key: str, source: Readable) -> ObjectInfo:
        """Store everything read from source under key."""

    def open(self, key: str) -> ReadStream:
        """Open key for streaming reads (use as a context manager)."""

    def stat(self, key: str) -> ObjectInfo:
        """Describe key or raise NotFound."""

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield the complete objects whose keys start with prefix."""

    def delete(self, keys: Iterable[str]) -> None:
        """Delete keys; missing ones are ignored."""

    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> Storage:
        """Use as `with block.build() as store:`; closes on exit."""

    def __exit__(self, *exc: object) -> None:
        """Close the backend."""


class Closing:
    """Mixin giving a backend `with backend as store:` that closes it on exit."""

    def close(self) -> None:
        """Release connections (backends override)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
