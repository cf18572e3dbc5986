"""Webhook receivers on loopback for the delivery tests: an HTTP(S) endpoint that records what
it gets, and raw TCP endpoints that misbehave the ways real receivers do."""

from __future__ import annotations

import dataclasses
import http.server
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    path: str


class HTTPReceiver:
    """Answers every POST with `status` (after `fail_first` answers of 503), `headers` and
    `body`, `delay_s` after reading it; over TLS when given a server context (the SNI each
    client sent is recorded)."""

    def __init__(
        self,
        *,
        status: int = 204,
        fail_first: int = 0,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        tls: ssl.SSLContext | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.requests: list[Received] = []
        self.server_names: list[str | None] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(Received(dict(self.headers), data, self.path))
                time.sleep(delay_s)  # a receiver that takes this long to answer
                failing = len(receiver.requests) <= fail_first
                self.send_response(503 if failing else status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls else "http"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, host: str = "127.0.0.1", path: str = "/hook") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class RawReceiver:
    """A TCP endpoint that reads the request and then, by `behaviour`:

    * garbage: answers bytes that are not HTTP and closes;
    * close: closes without answering;
    * hang: never answers (until the client gives up);
    * drip: starts an answer and sends one more byte every 0.2 s, never finishing it.

    Counts connections, and the most that were open at once."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self.open += 1
                self.most_open = max(self.most_open, self.open)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(0.2)
            request = b""
            # The body too: closing with unread bytes makes the kernel answer RST instead of
            # FIN, and the client would see a reset rather than the behaviour asked for.
            while not _complete(request) and not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                request += chunk
            if self.behaviour == "garbage":
                conn.sendall(b"SSH-2.0-OpenSSH_9.6 this is not HTTP\r\n\r\n")
            elif self.behaviour == "hang":
                self._until_closed(conn, lambda: None)
            elif self.behaviour == "drip":
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                self._until_closed(conn, lambda: conn.sendall(b"z"))
        except OSError:
            pass
        finally:
            conn.close()
            with self._lock:
                self.open -= 1

    def _until_closed(self, conn: socket.socket, every_tick: Callable[[], object]) -> None:
        while not self._stop.is_set():
            every_tick()
            try:
                if conn.recv(65536) == b"":
                    return
            except TimeoutError:
                continue

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self.thread.join(timeout=5)


def _complete(request: bytes) -> bool:
    """The request's head has arrived, and as much body as its Content-Length says."""
    head, found, body = request.partition(b"\r\n\r\n")
    if not found:
        return False
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return len(body) >= length
