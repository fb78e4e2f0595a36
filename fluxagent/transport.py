"""HTTP transport: one POST per call via httpx, with verified TLS, proxy, deadline and size cap.

The `Transport` protocol has one method, so the daemon and tests can pass a plain function.
`HttpxTransport` is the only code here that touches the network; everything else is pure.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from fluxagent import __version__
from fluxagent.config import ServerConfig, is_loopback_host
from fluxagent.errors import ConfigError
from fluxagent.wire.http import HttpResponse, TransportError, redact_url

USER_AGENT = f"fluxagent/{__version__}"
_GZIP_SLACK = 64 * 1024  # gzip of incompressible data is slightly larger than the data
FILE_CHUNK = 256 * 1024






@dataclass(frozen=True)
class FileBody:
    """A request body read from a file in chunks (a spooled digest of tens of MB is never held whole)."""

    path: Path
    offset: int
    size: int

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            left = self.size
            while left > 0:
                chunk = f.read(min(FILE_CHUNK, left))
                if not chunk:
                    raise OSError(f"{self.path} is shorter than its recorded size")
                left -= len(chunk)
                yield chunk


Body = bytes | FileBody


class Transport(Protocol):
    """POST body to url within `deadline` seconds; return the response or raise TransportError."""

    def __call__(self, url: str, body: Body, *, deadline: float) -> HttpResponse: ...

    def close(self) -> None:
        """Release pooled connections; the transport is not used afterwards."""


class Plain:
    """A Transport made of a plain function (tests, the offline exchange); closing it does nothing."""

    def __init__(self, fn: Callable[..., HttpResponse]) -> None:
        self._fn = fn

    def __call__(self, url: str, body: Body, *, deadline: float) -> HttpResponse:
        return self._fn(url, body, deadline=deadline)

    def close(self) -> None:
        """Nothing to release."""


def send(
    transport: Transport, url: str, body: Body, *, deadline: float
) -> HttpResponse | TransportError:
    """Return the transport's response, or the TransportError it raised (what `classify` takes)."""
    try:
        return transport(url, body, deadline=deadline)
    except TransportError as exc:
        return exc






# ---- proxy selection: pure ----


def proxy_for(url: str, configured: str | None, env: Mapping[str, str]) -> str | None:
    """Return the proxy for url: `configured`, else *_PROXY from env unless NO_PROXY covers url."""
    if configured:
        return configured
    # loopback is not bypassed implicitly (curl, Python agree; Go differs): list it in NO_PROXY
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    names = [f"{scheme}_proxy", f"{scheme.upper()}_PROXY", "all_proxy", "ALL_PROXY"]
    proxy = next((env[n].strip() for n in names if env.get(n, "").strip()), None)
    if proxy is None:
        return None
    if "://" not in proxy:  # curl and wget read "proxy:3128" as http://proxy:3128
        proxy = "http://" + proxy
    no_proxy = env.get("no_proxy", "").strip() or env.get("NO_PROXY", "").strip()
    port = parts.port or (443 if scheme == "https" else 80)
    return None if bypasses_proxy(parts.hostname or "", port, no_proxy) else proxy


def bypasses_proxy(host: str, port: int, no_proxy: str) -> bool:
    """True when NO_PROXY (curl syntax: *, names, .domains, IPs, CIDRs, :port) covers host:port."""
    host = host.strip("[]").rstrip(".").lower()
    try:
        host_is_ip = bool(ipaddress.ip_address(host))
    except ValueError:
        host_is_ip = False  # a name: suffix rules apply; an address: only IP and CIDR entries
    for raw in no_proxy.split(","):
        entry, entry_port = _split_no_proxy_entry(raw.strip().lower())
        if not entry or (entry_port is not None and entry_port != port):
            continue
        if entry == "*":
            return True
        name = entry.lstrip(".").rstrip(".")
        if host_is_ip and _ip_entry_matches(host, entry):
            return True
        if not host_is_ip and name and (host == name or host.endswith("." + name)):
            return True
        # "localhost" and the loopback addresses name the same place; users list one, mean all
        if is_loopback_host(host) and is_loopback_host(name):
            return True
    return False


def _split_no_proxy_entry(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):
        inner, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return inner, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        name, _, port = entry.partition(":")
        return name, int(port) if port.isdigit() else None
    return entry, None


def _ip_entry_matches(host: str, entry: str) -> bool:
    try:
        addr = ipaddress.ip_address(host)
        net = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return addr.version == net.version and addr in net


# ---- the edge: httpx exceptions → TransportError, once ----


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


# OpenSSL verify codes meaning "no trusted CA vouches for this certificate": the CA this machine trusts
# (server.ca_bundle or the system store) is the wrong one, a configuration error. An expired certificate
# or one for another host name is the server's problem, an outage like any other.
UNTRUSTED_ISSUER_CODES = frozenset({2, 18, 19, 20, 21})  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT{,_LOCALLY}, …


def untrusted_issuer(exc: ssl.SSLCertVerificationError) -> bool:
    """Return whether a certificate verification failed because no trusted CA issued it (a config error)."""
    return exc.verify_code in UNTRUSTED_ISSUER_CODES


def translate(exc: Exception, url: str, proxy: str | None = None) -> TransportError:
    """Return the TransportError for an httpx/OS exception raised while requesting url."""
    via = f" via proxy {redact_url(proxy)}" if proxy else ""
    chain = list(_causes(exc))
    if isinstance(exc, httpx.TimeoutException):
        what = {
            httpx.ConnectTimeout: "connecting timed out",
            httpx.ReadTimeout: "the server stopped sending (read timeout)",
            httpx.WriteTimeout: "sending the request timed out",
            httpx.PoolTimeout: "no free connection in time",
        }.get(type(exc), "timed out")
        return TransportError("timeout", url, what + via)
    for c in chain:
        if isinstance(c, socket.gaierror):
            return TransportError("dns", url, f"cannot resolve the host name{via}: {c.strerror}")
        if isinstance(c, ssl.SSLCertVerificationError):
            why = c.verify_message or c.reason
            return TransportError("tls", url, f"TLS certificate not trusted: {why}",
                                  config=untrusted_issuer(c))
        # an SSL error after the handshake (e.g. EOF without close_notify) is a broken connection
        if isinstance(c, ssl.SSLError) and isinstance(exc, httpx.ConnectError):
            return TransportError("tls", url, f"TLS handshake failed: {c.reason or c}")
    if isinstance(exc, httpx.ProxyError):
        return TransportError("connect", url, f"the proxy{via} refused the tunnel: {exc}")
    if isinstance(exc, httpx.ConnectError | ConnectionRefusedError):
        return TransportError("connect", url, f"cannot connect{via}: {_strerror(chain)}")
    if isinstance(exc, httpx.NetworkError | OSError):
        # connected, then broken (a reset while writing or awaiting the answer): the request may
        # have reached the server, so it is not a "connect" failure and the ledger records it
        return TransportError("broken", url, f"connection broken{via}: {_strerror(chain)}")
    return TransportError("protocol", url, f"bad HTTP from the server{via}: {exc}")


def _strerror(chain: list[BaseException]) -> str:
    for c in chain:
        if isinstance(c, OSError) and c.strerror:
            return c.strerror
    return str(chain[0]) or type(chain[0]).__name__


# ---- the shell: httpx ----


@dataclass
class _Job:
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)
    response: HttpResponse | None = None
    error: Exception | None = None


class HttpxTransport:
    """The real Transport: verified TLS, proxy, timeouts, overall deadline, decoded-size cap."""

    def __init__(self, server: ServerConfig, *, env: Mapping[str, str] | None = None) -> None:
        parts = urlsplit(server.url)
        host = parts.hostname or ""
        if parts.scheme != "https" and not (parts.scheme == "http" and is_loopback_host(host)):
            raise ConfigError([f"server.url: {server.url!r}: use https:// (http:// loopback only)"])
        self._origin = _origin(server.url)
        self._cap = server.max_response_bytes
        self._connect, self._read = server.connect_timeout, server.read_timeout
        self._proxy = proxy_for(server.url, server.proxy, os.environ if env is None else env)
        try:
            self._client = httpx.Client(
                verify=_tls_context(server.ca_bundle),
                proxy=_proxy_config(self._proxy),
                trust_env=False,  # env was read above, explicitly, so callers can pass it in
                follow_redirects=False,
                timeout=httpx.Timeout(self._read, connect=self._connect),
                limits=httpx.Limits(max_connections=4, max_keepalive_connections=1),
                headers={
                    "User-Agent": USER_AGENT,
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                    "Accept-Encoding": "gzip",
                },
            )
        except (ImportError, ValueError, httpx.InvalidURL) as exc:
            source = "server.proxy" if server.proxy else "HTTPS_PROXY/ALL_PROXY"
            shown = redact_url(self._proxy or "")
            raise ConfigError([f"{source}: {shown}: unusable: {exc}"]) from None

    def __call__(self, url: str, body: Body, *, deadline: float) -> HttpResponse:
        """POST body to url on the configured server within deadline s; raises TransportError."""
        if _origin(url) != self._origin:
            raise ValueError(f"{redact_url(url)} is not on the configured server")
        if not deadline > 0:
            raise TransportError("deadline", url, "no time left for the request")
        if deadline >= threading.TIMEOUT_MAX:
            raise ValueError(f"deadline {deadline} is not a finite number of seconds")
        job = _Job()
        # httpx bounds each socket operation, not the whole exchange (slow drip, DNS stalls); a
        # worker thread lets the caller leave exactly at the deadline whatever the socket does
        worker = threading.Thread(
            target=self._run, args=(job, url, body, deadline), name="fluxagent-http", daemon=True
        )
        worker.start()
        if not job.done.wait(deadline):
            job.cancelled.set()
            raise TransportError("deadline", url, f"no complete response within {deadline:g}s")
        if job.error is not None:
            raise job.error
        assert job.response is not None
        return job.response

    @property
    def proxy(self) -> str | None:
        """The proxy in use, password redacted (for `validate` and logs), or None."""
        return redact_url(self._proxy) if self._proxy else None

    def close(self) -> None:
        """Close pooled connections."""
        self._client.close()

    def __enter__(self) -> HttpxTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, job: _Job, url: str, body: Body, deadline: float) -> None:
        try:
            job.response = self._post(url, body, deadline, job.cancelled)
        except Exception as exc:  # handed to the caller's thread, which raises it
            job.error = exc
        finally:
            job.done.set()

    def _post(
        self, url: str, body: Body, deadline: float, cancelled: threading.Event
    ) -> HttpResponse:
        end = time.monotonic() + deadline
        # each blocking step is bounded by the deadline too, so an abandoned worker ends soon
        step = min(self._read, deadline)
        timeout = httpx.Timeout(step, connect=min(self._connect, deadline))

        def expired() -> bool:
            return cancelled.is_set() or time.monotonic() > end

        try:
            # a file body goes out in chunks with its length announced (no chunked encoding)
            sized = {"Content-Length": str(len(body))} if isinstance(body, FileBody) else None
            content = iter(body) if isinstance(body, FileBody) else body
            with self._client.stream("POST", url, content=content, headers=sized, timeout=timeout) as resp:
                if 300 <= resp.status_code < 400:
                    target = _origin_text(resp.headers.get("location", ""))
                    raise TransportError(
                        "redirect", url,
                        f"server answered {resp.status_code} redirect to {target} (not followed;"
                        " check server.url)", status=resp.status_code,
                    )
                headers: dict[str, str] = {}
                for name, value in resp.headers.multi_items():
                    headers[name] = f"{headers[name]}, {value}" if name in headers else value
                data = _read_capped(resp.iter_raw(), headers, self._cap, url, expired)
                return HttpResponse(resp.status_code, headers, data)
        except TransportError:
            raise
        except zlib.error as exc:
            raise TransportError("protocol", url, f"gzip response body is corrupt: {exc}") from exc
        except (httpx.HTTPError, OSError) as exc:
            if expired():
                late = f"no complete response within {deadline:g}s"
                raise TransportError("deadline", url, late) from exc
            raise translate(exc, url, self._proxy) from exc
        except Exception as exc:
            raise TransportError("protocol", url, f"unusable answer ({type(exc).__name__})") from exc


def _read_capped(
    chunks: Iterator[bytes],
    headers: Mapping[str, str],
    cap: int,
    url: str,
    expired: Callable[[], bool],
) -> bytes:
    """Return the decoded body, refusing more than cap decoded bytes before buffering them."""
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity", "gzip", "x-gzip"):
        raise TransportError("protocol", url, f"unsupported Content-Encoding {encoding[:40]!r}")
    length = headers.get("content-length", "").strip()
    if length.isdigit() and int(length) > cap:
        too_big = f"response of {length} bytes exceeds the {cap}-byte limit"
        raise TransportError("too_large", url, too_big)
    gz = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding in ("gzip", "x-gzip") else None
    out = bytearray()
    raw = 0
    for chunk in chunks:
        if expired():
            raise TransportError("deadline", url, "response body still arriving at the deadline")
        raw += len(chunk)
        pending = chunk
        while pending:
            if gz is None:
                out += pending
                pending = b""
            else:
                # max_length bounds memory: a gzip bomb yields at most cap+1 bytes before we stop
                out += gz.decompress(pending, cap + 1 - len(out))
                if gz.eof and (gz.unused_data or gz.unconsumed_tail):
                    raise TransportError("protocol", url, "data after the end of the gzip stream")
                pending = gz.unconsumed_tail
            if len(out) > cap or raw > cap + _GZIP_SLACK:
                raise TransportError("too_large", url, f"response exceeds the {cap}-byte limit")
    if gz is not None and not gz.eof:
        raise TransportError("protocol", url, "gzip response body is truncated")
    return bytes(out)


_HASH_LINK = re.compile(r"^[0-9a-f]{8}\.[0-9]+$")


def _system_capath() -> str | None:
    """Return the system's hashed CA directory when it can stand in for the whole trust store."""
    paths = ssl.get_default_verify_paths()
    if os.environ.get(paths.openssl_cafile_env) or not paths.capath:
        return None  # an explicit SSL_CERT_FILE is the operator's choice: load it as is
    try:
        names = os.listdir(paths.capath)
    except OSError:
        return None
    return paths.capath if any(_HASH_LINK.match(n) for n in names) else None


def _tls_context(ca_bundle: object) -> ssl.SSLContext:
    """Return a verifying context: the system trust store, or only ca_bundle when set."""
    try:
        if ca_bundle:
            return ssl.create_default_context(cafile=str(ca_bundle))
        # The hashed directory (c_rehash / update-ca-certificates) is searched per handshake, rather
        # than parsing every system CA up front: ~20 ms CPU and ~2 MB resident less per process.
        return ssl.create_default_context(capath=_system_capath())
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        problem = f"server.ca_bundle: {ca_bundle}: not a readable PEM file: {reason}"
        raise ConfigError([problem]) from None


def _proxy_config(proxy: str | None) -> httpx.Proxy | None:
    if proxy is None:
        return None
    if urlsplit(proxy).scheme == "https":
        # httpcore would verify an https proxy against certifi; use the system trust store
        return httpx.Proxy(proxy, ssl_context=_tls_context(None))
    return httpx.Proxy(proxy)


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


_SHOWN_ORIGIN = re.compile(r"^[a-z][a-z0-9+.-]{0,15}://[a-z0-9.:\[\]_-]{1,255}$")


def _origin_text(url: str) -> str:
    """Return the scheme://host of a Location for messages, or "elsewhere" if it does not parse."""
    # the origin only: a Location's path or query may carry tokens we should not log
    try:
        parts = urlsplit(url)
        shown = f"{parts.scheme}://{parts.hostname}" if parts.scheme and parts.hostname else ""
    except ValueError:  # "http://[x": the server's Location is no URL at all
        return "an unparsable location"
    return shown if _SHOWN_ORIGIN.match(shown) else "elsewhere"
