"""A real HTTP CONNECT proxy on loopback that records the targets it tunnelled (loopback only)."""

from __future__ import annotations

import base64
import selectors
import socket
import socketserver
import threading

from fluxagent.config import is_loopback_host


class _Handler(socketserver.BaseRequestHandler):
    server: _ProxyServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(5)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk or len(head) > 16384:
                return
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = [*lines[0].split(" "), "", ""][:3]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if method != "CONNECT":
            sock.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        if not self._authorized(headers.get("proxy-authorization", "")):
            sock.sendall(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'Proxy-Authenticate: Basic realm="t"\r\nContent-Length: 0\r\n\r\n'
            )
            return
        host, _, port = target.rpartition(":")
        host = host.strip("[]")
        if not is_loopback_host(host) or not port.isdigit():
            sock.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        self.server.targets.append(target)
        try:
            upstream = socket.create_connection((host, int(port)), timeout=5)
        except OSError:
            sock.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        with upstream:
            sock.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            if rest:
                upstream.sendall(rest)
            self._relay(sock, upstream)

    def _authorized(self, value: str) -> bool:
        if self.server.credentials is None:
            return True
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "basic":
            return False
        user, _, password = base64.b64decode(token).decode().partition(":")
        self.server.users.append(user)
        return (user, password) == self.server.credentials

    def _relay(self, a: socket.socket, b: socket.socket) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(a, selectors.EVENT_READ, b)
            sel.register(b, selectors.EVENT_READ, a)
            while not self.server.stopping.is_set():
                for key, _ in sel.select(timeout=0.2):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = src.recv(65536)
                        if not data:
                            return
                        key.data.sendall(data)
                    except OSError:
                        return


class _ProxyServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, credentials: tuple[str, str] | None) -> None:
        self.targets: list[str] = []
        self.users: list[str] = []
        self.credentials = credentials
        self.stopping = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)


class ConnectProxy:
    """HTTP CONNECT proxy on 127.0.0.1; `targets` lists each host:port it tunnelled to."""

    def __init__(self, username: str | None = None, password: str | None = None) -> None:
        creds = (username, password) if username is not None and password is not None else None
        self._server = _ProxyServer(creds)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        port = self._server.server_address[1]
        auth = f"{username}:{password}@" if creds else ""
        self.url = f"http://{auth}127.0.0.1:{port}"

    @property
    def targets(self) -> list[str]:
        return self._server.targets

    @property
    def users(self) -> list[str]:
        return self._server.users

    def __enter__(self) -> ConnectProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
