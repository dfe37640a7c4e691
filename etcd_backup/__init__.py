"""Core library for etcd backup and restore; never imports Prefect."""
