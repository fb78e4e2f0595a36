"""A loopback HTTP server that answers each request with the next scripted raw response, byte for byte.

The reference server speaks HTTP through http.server, which cannot send a status line like
`HTTP/1.1 1000 X` or a header the standard library would refuse; this one writes whatever bytes a
case holds, so tests see what a broken or hostile server can really put on the wire.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from fluxagent.testing.server_protocol import peek


def response(status: str | int, headers: list[tuple[str, str]] | None = None, body: bytes = b"",
             *, content_type: str | None = "application/json") -> bytes:
    """Return raw response bytes: `HTTP/1.1 <status> X`, the headers, Content-Length and body."""
    head = [f"HTTP/1.1 {status} X"]
    if content_type is not None:
        head.append(f"Content-Type: {content_type}")
    head += [f"{name}: {value}" for name, value in headers or []]
    head += [f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace") + body


@dataclass(frozen=True)
class Request:
    """One request as it arrived: path, the decoded (unverified) payload, and which case answered it."""

    path: str
    payload: dict[str, Any] | None
    case: int | None  # index into the scripted cases; None when the default answered


class _Handler(socketserver.BaseRequestHandler):
    server: RawServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(10)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk or len(data) > 1 << 20:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length" and value.strip().isdigit():
                    length = int(value.strip())
            while len(body) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                body += chunk
            path = lines[0].split(" ")[1] if lines[0].count(" ") >= 2 else ""
            _, answer = self.server.next_answer(path, body[:length])
            sock.sendall(answer)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return


class RawServer(socketserver.ThreadingTCPServer):
    """Answers requests in arrival order with the scripted cases, then with `default` forever."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, cases: list[bytes], default: bytes) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self._cases = deque(enumerate(cases))
        self._default = default
        self._lock = threading.Lock()
        self.requests: list[Request] = []
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def next_answer(self, path: str, body: bytes) -> tuple[int | None, bytes]:
        """Record the request and return (case index or None, the bytes to answer it with)."""
        with self._lock:
            index, answer = self._cases.popleft() if self._cases else (None, self._default)
            self.requests.append(Request(path, peek(body), index))
            return index, answer

    def left(self) -> int:
        """Return how many scripted cases have not been answered yet."""
        with self._lock:
            return len(self._cases)

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
