"""The network steps of `validate`: DNS, TCP, proxy tunnel and TLS to the server, each with a deadline.

They take the path the transport takes (the same proxy choice and the same CA), one step at a
time, so a failure names the step that broke. Each step as a whole is bounded by
server.connect_timeout (the budget httpx gives connecting, TLS included), however slowly the
other side drips its answer.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from urllib.parse import unquote, urlsplit

from fluxagent.config import ServerConfig
from fluxagent.errors import EXIT_CHECK_FAILED, EXIT_CONFIG, EXIT_UNAVAILABLE, FluxError
from fluxagent.transport import _tls_context, proxy_for, untrusted_issuer
from fluxagent.validate.check import Check, fail, ok
from fluxagent.wire.http import redact_url

MAX_PROXY_REPLY = 16 * 1024


def resolve(host: str, port: int, deadline: float) -> list[tuple[str, int]]:
    """Return the addresses of host:port, resolved within deadline s; raises OSError or TimeoutError."""
    box: list[list[tuple[str, int]] | BaseException] = []

    def work() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            box.append([(str(i[4][0]), int(i[4][1])) for i in infos])
        except OSError as exc:
            box.append(exc)

    # getaddrinfo cannot be interrupted; a daemon thread lets us leave at the deadline
    t = threading.Thread(target=work, name="fluxagent-dns", daemon=True)
    t.start()
    t.join(deadline)
    if not box:
        raise TimeoutError(f"no answer from the resolver within {deadline:g}s")
    got = box[0]
    if isinstance(got, BaseException):
        raise got
    return list(dict.fromkeys(got))


def connect(addrs: list[tuple[str, int]], deadline: float) -> socket.socket:
    """Return a socket connected to the first address that answers within the deadline; raises OSError."""
    end = time.monotonic() + deadline
    last: OSError = OSError("no address to connect to")
    for addr in addrs:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no connection within {deadline:g}s")
        try:
            return socket.create_connection(addr, timeout=left)
        except OSError as exc:
            last = exc
    raise last


def tunnel(sock: socket.socket, host: str, port: int, proxy: str, deadline: float) -> None:
    """Open an HTTP CONNECT tunnel to host:port through an http:// proxy; raises OSError on refusal."""
    parts = urlsplit(proxy)
    head = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    if parts.username is not None:
        cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        head += f"Proxy-Authorization: Basic {base64.b64encode(cred).decode()}\r\n"
    # one deadline for the whole exchange: a per-read timeout would restart with every byte a
    # dripping proxy sends, and 16 KiB one byte at a time is hours
    end = time.monotonic() + deadline
    sock.settimeout(deadline)
    sock.sendall((head + "\r\n").encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete answer to CONNECT within {deadline:g}s")
        sock.settimeout(left)
        piece = sock.recv(4096)
        if not piece or len(reply) > MAX_PROXY_REPLY:
            raise ConnectionError("the proxy closed the connection without answering CONNECT")
        reply += piece
    status = reply.split(b"\r\n", 1)[0].decode("latin-1")
    code = status.split(" ")[1] if status.count(" ") >= 1 else ""
    if code != "200":
        raise ConnectionRefusedError(f"the proxy answered {status[:80]!r}")


def _why(exc: BaseException, deadline: float) -> str:
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError since 3.10
        return f"no answer in time (deadline {deadline:g}s)"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _tls(sock: socket.socket, server: ServerConfig, host: str) -> Check:
    trust = f"server.ca_bundle {server.ca_bundle}" if server.ca_bundle else "the system trust store"
    try:
        ctx = _tls_context(server.ca_bundle)
    except FluxError as exc:
        return fail("tls", exc.message, "point server.ca_bundle at a readable PEM file", EXIT_CONFIG)
    sock.settimeout(server.connect_timeout)
    try:
        with ctx.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False) as tls:
            tls.do_handshake()
            cert = tls.getpeercert() or {}
    except ssl.SSLCertVerificationError as exc:
        return fail("tls", f"certificate of {host} not trusted by {trust}: {exc.verify_message or exc.reason}",
                    "set server.ca_bundle to the CA that issued the server's certificate",
                    EXIT_CONFIG if untrusted_issuer(exc) else EXIT_CHECK_FAILED)
    except (OSError, ssl.SSLError) as exc:
        return fail("tls", f"TLS handshake with {host} failed: {_why(exc, server.connect_timeout)}",
                    "check that server.url points at the license server's HTTPS port", EXIT_UNAVAILABLE)
    return ok("tls", f"certificate for {host} verified with {trust}, valid until {cert.get('notAfter', '?')}")


def network_checks(server: ServerConfig, env: Mapping[str, str] | None = None) -> Iterator[Check]:
    """Yield the dns, tcp, proxy and tls checks for server.url; stop at the first failing step."""
    parts = urlsplit(server.url)
    host, https = parts.hostname or "", parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    proxy = proxy_for(server.url, server.proxy, os.environ if env is None else env)
    deadline = server.connect_timeout
    net_fix = "check the network path, firewall and server.url"
    if proxy and urlsplit(proxy).scheme != "http":
        yield Check("proxy", "warn", f"{redact_url(proxy)}: only http:// proxies are checked step by step",
                    "the live license check below goes through it")
        return
    dial_host, dial_port = (urlsplit(proxy).hostname or "", urlsplit(proxy).port or 80) if proxy else (host, port)
    try:
        addrs = resolve(dial_host, dial_port, deadline)
    except OSError as exc:
        yield fail("dns", f"cannot resolve {dial_host}: {_why(exc, deadline)}", "check /etc/resolv.conf and the name",
                   EXIT_UNAVAILABLE)
        return
    yield ok("dns", f"{dial_host} resolves to {', '.join(a for a, _ in addrs[:4])}")
    try:
        sock = connect(addrs, deadline)
    except OSError as exc:
        yield fail("tcp", f"cannot connect to {dial_host} port {dial_port}: {_why(exc, deadline)}", net_fix,
                   EXIT_UNAVAILABLE)
        return
    with sock:
        yield ok("tcp", f"connected to {dial_host} port {dial_port}")
        if proxy:
            try:
                tunnel(sock, host, port, proxy, deadline)
            except OSError as exc:
                yield fail("proxy", f"{redact_url(proxy)}: no tunnel to {host}:{port}: {_why(exc, deadline)}",
                           "check server.proxy / HTTPS_PROXY and the proxy's rules", EXIT_UNAVAILABLE)
                return
            yield ok("proxy", f"tunnel to {host}:{port} through {redact_url(proxy)}")
        else:
            yield ok("proxy", "none: direct connection")
        if https:
            yield _tls(sock, server, host)
        else:
            yield ok("tls", "not used: plain HTTP to a loopback address")


__all__ = ["connect", "network_checks", "resolve", "tunnel"]
