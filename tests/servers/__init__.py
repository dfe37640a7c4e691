"""Real servers for tests and benchmarks: SeaweedFS (S3), a UFile-rules proxy, a backup sshd, a cuttable TCP relay."""
