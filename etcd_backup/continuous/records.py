"""The raw segment encoding: one record per etcd revision, holding etcd's own mvccpb.Event messages.

A raw segment is MAGIC followed by records; a record is
`>qqI` (revision, receive time in Unix nanoseconds, event count), then per event `>I` length and the
event's protobuf bytes (mvccpb.Event as the watch delivered it, without prev_kv). Exact (etcd's own
messages, byte for byte), compact once zstd-compressed, and decodable without this tool by any
protobuf library.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from pyetcd.etcdrpc import kv_pb2

from etcd_backup.continuous.errors import SegmentCorrupt

MAGIC = b"etcd-evl/1\n"
_HEAD = struct.Struct(">qqI")
_LEN = struct.Struct(">I")
Event = kv_pb2.Event
PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE


@dataclass(frozen=True)
class Revision:
    """The events of one etcd revision as the follower received them, with the receive time."""

    revision: int
    received_ns: int
    events: tuple[bytes, ...]

    @property
    def size(self) -> int:
        """Bytes this revision takes in a raw segment."""
        return _HEAD.size + sum(_LEN.size + len(e) for e in self.events)

    def decoded(self) -> list:
        """The events as mvccpb.Event messages."""
        return [Event.FromString(e) for e in self.events]


def encode(revision: Revision) -> bytes:
    """One record's bytes."""
    parts = [_HEAD.pack(revision.revision, revision.received_ns, len(revision.events))]
    for event in revision.events:
        parts.append(_LEN.pack(len(event)))
        parts.append(event)
    return b"".join(parts)


def decode(raw: bytes | memoryview, where: str = "") -> Iterator[Revision]:
    """The records of a raw segment, in order; SegmentCorrupt when it is not one or is cut short."""
    view = memoryview(raw)
    if bytes(view[: len(MAGIC)]) != MAGIC:
        raise SegmentCorrupt("not an event segment (bad magic)", step="read segment", node=where or None)
    pos, end = len(MAGIC), len(view)
    try:
        while pos < end:
            rev, received, count = _HEAD.unpack_from(view, pos)
            pos += _HEAD.size
            events = []
            for _ in range(count):
                (length,) = _LEN.unpack_from(view, pos)
                pos += _LEN.size
                if pos + length > end:
                    raise struct.error("event runs past the end")
                events.append(bytes(view[pos : pos + length]))
                pos += length
            yield Revision(rev, received, tuple(events))
    except struct.error:
        raise SegmentCorrupt(f"segment is cut short at byte {pos}", step="read segment", node=where or None) from None
