"""HTTP plumbing of the reference server: threaded http.server with TLS, and a raw reply writer.

Kept apart from the protocol so the server module reads as rules and faults, not sockets.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import socketserver
import ssl
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol


class Owner(Protocol):
    """What the HTTP layer needs from the server that owns it."""

    verbose: bool

    def handle_post(self, handler: Handler) -> None: ...


class Handler(BaseHTTPRequestHandler):
    """One connection: POST goes to the owner; everything else is 405."""

    protocol_version = "HTTP/1.1"  # keep-alive, as real clients use it
    timeout = 30  # a stuck client must not hold a thread for ever
    server: HTTPServer

    def setup(self) -> None:
        """Finish the TLS handshake in this connection's thread, then set up the streams."""
        # Headers and body go out as separate writes; Nagle + delayed ACK would add 40 ms.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(self.request, ssl.SSLSocket):
            # Here rather than in accept(), so a slow client cannot stall every other one.
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()

    def do_POST(self) -> None:
        """Hand the request to the owning server."""
        self.server.owner.handle_post(self)

    def do_GET(self) -> None:
        """Answer 405: the protocol only POSTs."""
        self.close_connection = True
        send(self, Answer(405, error_body("method_not_allowed", "POST only")), threading.Event())

    def log_message(self, format: str, *args: Any) -> None:
        """Log to stderr only when the owner is verbose."""
        if self.server.owner.verbose:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")


class HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that tracks open connections so stop() can drop them."""

    daemon_threads = True

    timeout = 0  # handle_request() only runs once select() saw a pending connection

    def __init__(self, address: tuple[str, int], owner: Owner) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        super().__init__(address, Handler)

    def serve_until_woken(self) -> None:
        """Accept connections until wake(); blocks in select, so an idle server costs no CPU.

        Unlike serve_forever(), which polls for shutdown, this stops at once when woken.
        """
        # Non-blocking accept: a connection that vanished after select() must not hang us.
        self.socket.setblocking(False)
        with selectors.DefaultSelector() as sel:
            sel.register(self.socket, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while True:
                ready = sel.select()
                if any(key.fileobj is self._wake_r for key, _ in ready):
                    return
                self.handle_request()

    def wake(self) -> None:
        """Make serve_until_woken() return."""
        self._wake_w.send(b"x")

    def server_close(self) -> None:
        """Close the listening socket and the wake-up pair."""
        super().server_close()
        self._wake_r.close()
        self._wake_w.close()

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup (socket.getfqdn), which can stall."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        """Track the connection, then serve it on its own thread."""
        with self._conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        """Forget and close the connection."""
        with self._conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet unless verbose: failed handshakes and dropped clients are normal in tests."""
        if self.owner.verbose:
            super().handle_error(request, client_address)

    def drop_connections(self) -> None:
        """Shut down every open connection, waking threads parked on keep-alive reads."""
        with self._conn_lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class HTTPServer6(HTTPServer):
    """The IPv6 variant (host "::1")."""

    address_family = socket.AF_INET6


@dataclass(frozen=True)
class Answer:
    """A response to send: status (0 = close without answering), body pieces, extra headers.

    length None sends the body chunked; -1 means "len(body)", which needs body to be bytes.
    interval spaces the body pieces that many seconds apart (a slow drip).
    """

    status: int
    body: bytes | Iterable[bytes] = b""
    headers: Iterable[tuple[str, str]] = ()
    length: int | None = -1
    interval: float = 0.0


def send(h: BaseHTTPRequestHandler, answer: Answer, stopping: threading.Event) -> None:
    """Write answer to the handler's connection; a client gone mid-answer just ends it."""
    body = answer.body
    pieces = [body] if isinstance(body, bytes) else body
    length = answer.length
    if length == -1:
        length = len(body) if isinstance(body, bytes) else None
    try:
        h.send_response(answer.status)
        h.send_header("Content-Type", "application/json")
        for name, value in answer.headers:
            h.send_header(name, value)
        if length is None:
            h.send_header("Transfer-Encoding", "chunked")
        else:
            h.send_header("Content-Length", str(length))
        h.end_headers()
        for i, piece in enumerate(pieces):
            if answer.interval and i and stopping.wait(answer.interval):
                h.close_connection = True  # stopping: the body stays short
                break
            if length is not None:
                h.wfile.write(piece)
            elif piece:  # an empty chunk would end the body early
                h.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        if length is None:
            h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()
    except OSError:
        h.close_connection = True


def rechunk(pieces: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Yield the bytes of pieces again, cut into size-byte pieces."""
    for piece in pieces:
        for i in range(0, len(piece), size):
            yield piece[i : i + size]


def error_body(code: str, detail: str) -> bytes:
    """Return the JSON error body {"error": code, "detail": detail}."""
    return json.dumps({"error": code, "detail": detail}, sort_keys=True).encode()
