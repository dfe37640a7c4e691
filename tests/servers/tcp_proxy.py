"""A TCP relay in front of a real server that can make the server vanish mid-transfer, or act at a byte count."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

CHUNK = 256 * 1024


class TCPProxy:
    """Relay <listen_host>:<free port> to target; `cut_after(n)` drops every connection after n bytes.

    `when_relayed(n, action)` calls action once when n more bytes have been relayed (e.g. kill the
    server behind the relay in the middle of a transfer); `cut_after(n, stay_gone=False)` drops the
    connections of that moment only, and later connections are relayed again.
    """

    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.listener = socket.create_server((listen_host, 0))
        self.port = self.listener.getsockname()[1]
        self.gone = False
        self.cuts = 0
        self._budget: int | None = None
        self._stay_gone = True
        self._trigger: tuple[int, Callable[[], None]] | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)

    def start(self) -> TCPProxy:
        """Accept connections in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every relayed connection."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept(): close() alone leaves the port listening
        self.listener.close()
        self._drop_all()

    def cut_after(self, nbytes: int, stay_gone: bool = True) -> None:
        """Vanish once nbytes more bytes (either direction) have been relayed (only for a moment: stay_gone=False)."""
        with self._lock:
            self._budget, self._stay_gone = nbytes, stay_gone

    def when_relayed(self, nbytes: int, action: Callable[[], None]) -> None:
        """Call action once, from the relaying thread, when nbytes more bytes have been relayed."""
        with self._lock:
            self._trigger = (nbytes, action)

    def vanish(self) -> None:
        """Go away at once: drop every relayed connection and refuse new ones until heal()."""
        with self._lock:
            self.gone = True
            self.cuts += 1
        self._drop_all()

    def heal(self) -> None:
        """Come back: accept and relay again."""
        with self._lock:
            self.gone, self._budget, self._trigger = False, None, None

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
                self._fire(len(data))
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

    def _fire(self, nbytes: int) -> None:
        with self._lock:
            if self._trigger is None:
                return
            left, action = self._trigger[0] - nbytes, self._trigger[1]
            self._trigger = (left, action) if left >= 0 else None
        if left < 0:
            action()

    def _spend(self, nbytes: int) -> bool:
        with self._lock:
            if self._budget is not None:
                self._budget -= nbytes
                if self._budget < 0:
                    self.cuts += 1
                    self.gone, self._budget = True, None
                    if not self._stay_gone:
                        self.gone = False
                        return True
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
