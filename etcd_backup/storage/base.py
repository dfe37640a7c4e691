"""The Storage protocol every backend implements, with its rules in the docstrings."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Protocol, runtime_checkable


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key (relative to the backend's root), size in bytes and time."""

    key: str
    size: int
    modified: datetime


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

    def put(self, key: str, source: BinaryIO) -> ObjectInfo:
        """Store everything read from source under key."""

    def open(self, key: str) -> BinaryIO:
        """Open key for streaming reads (use as a context manager)."""

    def stat(self, key: str) -> ObjectInfo:
        """Describe key or raise NotFound."""

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield the complete objects whose keys start with prefix."""

    def delete(self, keys: Iterable[str]) -> None:
        """Delete keys; missing ones are ignored."""

    def close(self) -> None:
        """Release connections."""
