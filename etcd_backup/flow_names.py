"""The names of the Prefect flows, in one place: flows register under them and the core names them in advice."""

BACKUP = "etcd-backup"
LIST_BACKUPS = "etcd-list-backups"
PRUNE_BACKUPS = "etcd-prune-backups"
DIAGNOSE = "etcd-diagnose"
RESTORE_CLUSTER = "etcd-restore-cluster"
RESTORE_MEMBER = "etcd-restore-member"
VERIFY_BACKUP = "etcd-verify-backup"
