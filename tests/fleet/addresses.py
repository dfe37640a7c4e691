"""Hand out blocks of fleet IPs (127.0.N.11.., 127.0.N.21.., ...) that are free right now."""

import socket
import threading

from . import fleet_net

_lock = threading.Lock()
_taken: set[int] = set()
PORTS = (22, 2379, 2380)


def _free(ip: str) -> bool:
    for port in PORTS:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((ip, port))
            except OSError:
                return False
    return True


def allocate(count: int) -> list[str]:
    """Reserve `count` (at most 9) consecutive IPs whose ports 22, 2379 and 2380 are free."""
    if not 1 <= count <= 9:
        raise ValueError(f"fleet blocks hold 1 to 9 IPs, not {count}")
    net = fleet_net()
    with _lock:
        for block in range(24):
            ips = [f"127.0.{net}.{10 * block + 11 + k}" for k in range(count)]
            if block not in _taken and all(_free(ip) for ip in ips):
                _taken.add(block)
                return ips
    raise RuntimeError(f"no free block of {count} IPs left in 127.0.{net}.0/24")


def release(ips: list[str]) -> None:
    """Give a block from `allocate` back."""
    with _lock:
        _taken.discard((int(ips[0].rsplit(".", 1)[1]) - 11) // 10)


class EtcdURLs:
    """client_url and peer_url of something with an `ip` (an etcd member, a master node)."""

    ip: str

    @property
    def client_url(self) -> str:
        return f"https://{self.ip}:2379"

    @property
    def peer_url(self) -> str:
        return f"https://{self.ip}:2380"
