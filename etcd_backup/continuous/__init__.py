"""Continuous backup: follow every change of a cluster into segments, and replay them to any revision.

Modules: names (segment keys, lineages), records (the raw encoding), manifest, segment (store/load one
segment), watch (the Follower), writer (SegmentWriter), runner (start_point, ContinuousBackup), chain
(listing, chain bases, choosing the backup and segments for a revision), coverage (reachable targets and
gaps), timeline (a time to a revision), catalog (Catalog: all of it over one storage), prune (segment
retention), txn and leases (helpers of replay), replay (apply segments to an etcd restored from the full
snapshot), rebuild (the snapshot of a past revision, for the whole-cluster restore).
"""
