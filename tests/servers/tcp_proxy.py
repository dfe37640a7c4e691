"""A TCP relay in front of a real server that can make the server vanish mid-transfer."""

from __future__ import annotations

import socket
import threading

CHUNK = 256 * 1024


class TCPProxy:
    """Relay <listen_host>:<free port> to target; after n bytes `cut_after(n)` vanishes, `drop_after(n)` drops once."""

    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.listener = socket.create_server((listen_host, 0))
        self.port = self.listener.getsockname()[1]
        self.gone = False
        self.drops = 0
        self._once = False
        self._budget: int | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)

    def start(self) -> TCPProxy:
        """Accept connections in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every relayed connection."""
        self.listener.close()
        self._drop_all()

    def cut_after(self, nbytes: int) -> None:
        """Vanish once nbytes more bytes (either direction) have been relayed."""
        with self._lock:
            self._budget, self._once = nbytes, False

    def drop_after(self, nbytes: int) -> None:
        """Drop every open connection once nbytes more bytes have been relayed; later connections work."""
        with self._lock:
            self._budget, self._once = nbytes, True

    def heal(self) -> None:
        """Come back: accept and relay again."""
        with self._lock:
            self.gone, self._budget = False, None

    def __enter__(self) -> TCPProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.gone:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets |= {client, server}
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(CHUNK):
                if self._spend(len(data)):
                    self._drop_all()
                    return
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _spend(self, nbytes: int) -> bool:
        with self._lock:
            if self._budget is not None:
                self._budget -= nbytes
                if self._budget < 0:
                    if self._once:
                        self._budget, self.drops = None, self.drops + 1
                        return True
                    self.gone = True
            return self.gone

    def _drop_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
