"""Fill etcd with Kubernetes-like keys and values, fast (batched transactions on threads)."""

import os
from concurrent.futures import ThreadPoolExecutor

MAX_OPS = 128  # etcd's default --max-txn-ops
MAX_BATCH_BYTES = 1 << 20  # stays below etcd's 1.5 MiB request limit
NAMESPACES = ("default", "kube-system")


def k8s_value(index: int, size: int) -> bytes:
    """Return a value of `size` bytes shaped like a protobuf-encoded Kubernetes object."""
    head = (
        b"k8s\x00\n\x0f\n\x02v1\x12\tConfigMap\x12"
        + f'{{"metadata":{{"name":"cm-{index:08d}","namespace":"default","uid":"{os.urandom(8).hex()}"}},'
        '"data":{"config.yaml":"'.encode()
    )
    body = os.urandom(max(0, size - len(head)) // 2).hex().encode()
    return (head + body + b'"}}' + b" " * size)[:size]


def _batches(n_keys: int, value_size: int):
    per_batch = max(1, min(MAX_OPS, MAX_BATCH_BYTES // max(1, value_size + 64)))
    for start in range(0, n_keys, per_batch):
        yield range(start, min(n_keys, start + per_batch))


def fill(client, n_keys: int, value_size: int, prefix: str = "/registry/configmaps/default/", threads: int = 4) -> int:
    """Write `n_keys` keys `<prefix>cm-<i>` with `value_size`-byte values; return the bytes written.

    Under /registry/ the namespaces default and kube-system are written too, as every Kubernetes cluster has them.
    """

    def put(batch: range) -> int:
        ops = [client.transactions.put(f"{prefix}cm-{i:08d}", k8s_value(i, value_size)) for i in batch]
        client.transaction(compare=[], success=ops, failure=[])
        return len(batch) * value_size

    if prefix.startswith("/registry/"):
        namespaces = [client.transactions.put(f"/registry/namespaces/{ns}", k8s_value(0, 256)) for ns in NAMESPACES]
        client.transaction(compare=[], success=namespaces, failure=[])
    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(put, _batches(n_keys, value_size)))
