"""Restore: node facts, pure planners of ordered per-node steps, and the executor that runs and undoes them.

Shared by the whole-cluster restore (quorum lost) and the member replacement (quorum kept).
"""
