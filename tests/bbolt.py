"""Just enough of bbolt's file format to find etcd's key-bucket leaf pages and damage one, for corruption tests."""

from __future__ import annotations

import struct


def page_size(body: bytes) -> int:
    return struct.unpack_from("<I", body, 16 + 8)[0]  # bbolt meta page: header, magic, version, page size


def mvcc_leaves(body: bytes) -> list[int]:
    """Leaf pages of etcd's key bucket reachable from the newest meta page, in key (revision) order."""
    size = page_size(body)
    metas = [struct.unpack_from("<QQQQQ", body, page * size + 32) for page in (0, 1)]  # root, seq, freelist, pgid, txid
    root = max(metas, key=lambda meta: meta[4])[0]
    offset = root * size
    _, flags, count, _ = struct.unpack_from("<QHHI", body, offset)
    assert flags == 0x02, "the root bucket is one leaf page in etcd's db"
    for i in range(count):
        element = offset + 16 + 16 * i
        bucket, pos, ksize, _ = struct.unpack_from("<IIII", body, element)
        if bucket & 1 and body[element + pos : element + pos + ksize] == b"key":
            (key_root,) = struct.unpack_from("<Q", body, element + pos + ksize)
            return _leaves(body, key_root)
    raise AssertionError("no key bucket")


def _leaves(body: bytes, page: int) -> list[int]:
    offset = page * page_size(body)
    _, flags, count, _ = struct.unpack_from("<QHHI", body, offset)
    if flags == 0x02:
        return [page]
    children = [struct.unpack_from("<IIQ", body, offset + 16 + 16 * i)[2] for i in range(count)]
    return [leaf for child in children for leaf in _leaves(body, child)]


def corrupt(body: bytearray, page: int, how: str) -> None:
    """Damage the first element of a key-bucket leaf page (or its header) in place."""
    offset = page * page_size(body)
    element = offset + 16
    _, pos, ksize, vsize = struct.unpack_from("<IIII", body, element)
    key = element + pos
    if how == "value bytes":
        middle = key + ksize + vsize // 2
        body[middle : middle + 16] = bytes(b ^ 0xFF for b in body[middle : middle + 16])
    elif how == "page header":
        body[offset : offset + 16] = bytes(16)
    elif how == "key length":
        struct.pack_into("<I", body, element + 8, 5)
    elif how == "key order":
        body[key : key + 8] = b"\xff" * 8
