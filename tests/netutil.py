"""Small real loopback HTTP(S) servers for transport tests: a handler function per test."""

from __future__ import annotations

import contextlib
import http.server
import socket
import ssl
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trustme


@dataclass
class Seen:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


# a test's handler: the request handler to write the reply with, the request, and the stop event
App = Callable[[http.server.BaseHTTPRequestHandler, Seen, threading.Event], None]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        seen = Seen(
            self.command,
            self.path,
            {k.lower(): v for k, v in self.headers.items()},
            self.rfile.read(length),
        )
        self.server.seen.append(seen)
        # the client giving up mid-reply is what many tests are about
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.server.app(self, seen, self.server.stop)
        self.close_connection = True

    do_GET = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, app: App, context: ssl.SSLContext | None) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.app = app
        self.context = context
        self.seen: list[Seen] = []
        self.stop = threading.Event()
        super().__init__((host, 0), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # handshake in the connection's own thread, so a stalled client cannot block accept()
        if self.context is None:
            super().finish_request(request, client_address)
            return
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        with tls:  # wrap_socket detached `request`; the caller's close would miss this one
            super().finish_request(tls, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class LoopbackServer:
    """A threaded HTTP(S) server on 127.0.0.1 or ::1 running `app`; use as a context manager."""

    def __init__(
        self, app: App, *, cert: trustme.LeafCert | None = None, host: str = "127.0.0.1"
    ) -> None:
        assert host in ("127.0.0.1", "::1"), "tests talk to loopback only"
        context = None
        if cert is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            cert.configure_cert(context)
        self._server = _Server(host, app, context)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        scheme = "https" if cert is not None else "http"
        port = self._server.server_address[1]
        self.url = f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

    @property
    def seen(self) -> list[Seen]:
        return self._server.seen

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop.set()
        self._server.shutdown()
        self._server.server_close()


def reply(
    status: int, body: bytes = b"", headers: dict[str, str] | None = None
) -> App:
    """Return an app that answers every request with status, body and headers."""

    def app(h: http.server.BaseHTTPRequestHandler, seen: Seen, stop: threading.Event) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return app


def closed_port(host: str = "127.0.0.1") -> int:
    """Return a loopback port nothing listens on (bound, then released)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


def ipv6_loopback_available() -> bool:
    """True when ::1 can be bound here."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def gzip_bomb(size: int) -> bytes:
    """Return a valid gzip stream of size zero bytes, cheaply: one flushed 1 MiB block repeated."""
    block_size = 1 << 20
    full, rest = divmod(size, block_size)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(block_size)) + c.flush(zlib.Z_FULL_FLUSH)
    t = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = t.compress(bytes(rest)) + t.flush(zlib.Z_FINISH)
    crc = 0
    zeros = bytes(block_size)
    for _ in range(full):
        crc = zlib.crc32(zeros, crc)
    crc = zlib.crc32(bytes(rest), crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + block * full + tail + struct.pack("<II", crc, size & 0xFFFFFFFF)
