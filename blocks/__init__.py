"""Prefect blocks of this project; `prefect block register -m blocks` registers every type below."""

from blocks.cluster import EtcdCluster, load_cluster
from blocks.identity import AgeIdentity
from blocks.storage import LocalStorage, S3Storage, SSHServerStorage, UFileStorage, load_storage

__all__ = [
    "AgeIdentity",
    "EtcdCluster",
    "LocalStorage",
    "S3Storage",
    "SSHServerStorage",
    "UFileStorage",
    "load_cluster",
    "load_storage",
]
