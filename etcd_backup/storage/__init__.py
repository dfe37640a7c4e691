"""Storage backends behind one protocol."""

from etcd_backup.storage.base import ObjectInfo, Storage

__all__ = ["ObjectInfo", "Storage"]
