"""Continuous backup: follow every change of a cluster into segments, and replay them to any revision.

Modules: names (segment keys), records (the raw encoding), manifest, segment (store/load one segment),
watch (the Follower), writer (SegmentWriter), runner (start_point, ContinuousBackup), chain (the
catalog: listing, coverage, choosing a restore point), prune (segment retention), txn and leases
(helpers of replay), replay (apply segments to an etcd restored from the full snapshot).
"""
