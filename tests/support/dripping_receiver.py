"""A webhook receiver that never finishes its answer: a status line, then one byte every ``gap`` seconds.

A per-read timeout never fires against it (every read gets a byte in time); only a total
deadline cuts it. It counts connections and how many the client closed.
"""

import socket
import threading


class DrippingReceiver:
    def __init__(self, gap: float) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.gap = gap
        self.connections = 0
        self.closed_by_client = 0
        self.client_closed = threading.Event()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._drip, args=(connection,), daemon=True).start()

    def _drip(self, connection: socket.socket) -> None:
        with connection:
            try:
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 200 OK\r\n")
                while not self._stopped.wait(self.gap):
                    connection.sendall(b"X-Drip: 1\r\n")
            except OSError:
                with self._lock:
                    self.closed_by_client += 1
                self.client_closed.set()

    def close(self) -> None:
        self._stopped.set()
        self.listener.close()
