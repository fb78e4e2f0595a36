"""HttpxTransport against real loopback HTTP(S) servers and a real CONNECT proxy; pure helpers."""

from __future__ import annotations

import gzip
import http.server
import importlib.util
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from netutil import LoopbackServer, Seen, closed_port, gzip_bomb, ipv6_loopback_available, reply
from proxy import ConnectProxy

from fluxagent import __version__
from fluxagent.config import ServerConfig
from fluxagent.errors import ConfigError
from fluxagent.transport import HttpxTransport, bypasses_proxy, proxy_for, send, translate
from fluxagent.wire.http import HttpResponse, TransportError, parse_retry_after, redact_url

Handler = http.server.BaseHTTPRequestHandler
NO_ENV: dict[str, str] = {}


@pytest.fixture(scope="module")
def cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("127.0.0.1", "::1", "localhost")


def server_config(url: str, **kw: Any) -> ServerConfig:
    kw.setdefault("connect_timeout", 2.0)
    kw.setdefault("read_timeout", 5.0)
    return ServerConfig(url=url, **kw)


@pytest.fixture
def https(cert: trustme.LeafCert) -> Iterator[Any]:
    """Start an HTTPS loopback server for an app: `with https(app) as srv`."""
    servers: list[LoopbackServer] = []

    def start(app: Any, host: str = "127.0.0.1") -> LoopbackServer:
        srv = LoopbackServer(app, cert=cert, host=host).__enter__()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.__exit__(None, None, None)


def post(cfg: ServerConfig, path: str = "/v1/heartbeat", body: bytes = b"{}", deadline: float = 5.0,
         env: dict[str, str] | None = None) -> HttpResponse:
    with HttpxTransport(cfg, env=NO_ENV if env is None else env) as t:
        return t(cfg.url + path, body, deadline=deadline)


def failure(
    cfg: ServerConfig, deadline: float = 5.0, env: dict[str, str] | None = None
) -> TransportError:
    with pytest.raises(TransportError) as info:
        post(cfg, deadline=deadline, env=env)
    return info.value


# ---- end to end over HTTPS ----


def test_posts_over_https_verified_with_ca_bundle(https: Any, ca_pem: Path) -> None:
    srv = https(reply(200, b'{"ok":1}', {"X-Thing": "a"}))
    resp = post(server_config(srv.url, ca_bundle=ca_pem), body=b'{"payload":1}')
    assert (resp.status, resp.body, resp.headers["x-thing"]) == (200, b'{"ok":1}', "a")
    [seen] = srv.seen
    assert (seen.method, seen.path, seen.body) == ("POST", "/v1/heartbeat", b'{"payload":1}')
    assert seen.headers["user-agent"] == f"fluxagent/{__version__}"
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["accept-encoding"] == "gzip"


def test_gzip_response_body_is_returned_decoded(https: Any, ca_pem: Path) -> None:
    srv = https(reply(200, gzip.compress(b"x" * 5000), {"Content-Encoding": "gzip"}))
    assert post(server_config(srv.url, ca_bundle=ca_pem)).body == b"x" * 5000


def test_error_status_is_returned_as_a_response_with_its_body(https: Any, ca_pem: Path) -> None:
    srv = https(reply(503, b"busy", {"Retry-After": "7"}))
    resp = post(server_config(srv.url, ca_bundle=ca_pem))
    assert (resp.status, resp.headers["retry-after"], resp.body) == (503, "7", b"busy")


def test_server_cert_from_another_ca_is_a_tls_error(https: Any, tmp_path: Path) -> None:
    srv = https(reply(200))
    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    err = failure(server_config(srv.url, ca_bundle=other))
    assert err.kind == "tls" and srv.url in err.message and not srv.seen


def test_system_trust_store_does_not_trust_a_private_ca(https: Any) -> None:
    srv = https(reply(200))
    assert failure(server_config(srv.url)).kind == "tls"


def test_cert_for_another_hostname_is_a_tls_error(ca: trustme.CA, ca_pem: Path) -> None:
    wrong = ca.issue_cert("licensing.example")
    with LoopbackServer(reply(200), cert=wrong) as srv:
        err = failure(server_config(srv.url, ca_bundle=ca_pem))
    assert err.kind == "tls" and "127.0.0.1" in err.message


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback here")
def test_ipv6_loopback_over_https(https: Any, ca_pem: Path) -> None:
    srv = https(reply(200, b"six"), host="::1")
    assert post(server_config(srv.url, ca_bundle=ca_pem)).body == b"six"


def test_unreadable_ca_bundle_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    for path in (bad, tmp_path / "missing.pem"):
        with pytest.raises(ConfigError, match=r"server\.ca_bundle"):
            HttpxTransport(server_config("https://127.0.0.1:1", ca_bundle=path), env=NO_ENV)


def test_plain_http_to_a_non_loopback_host_is_refused_before_any_connection() -> None:
    with pytest.raises(ConfigError, match=r"server\.url"):
        HttpxTransport(server_config("http://licensing.example"), env=NO_ENV)


def test_plain_http_to_loopback_is_allowed() -> None:
    with LoopbackServer(reply(200, b"plain")) as srv:
        assert post(server_config(srv.url)).body == b"plain"


def test_url_off_the_configured_server_is_refused() -> None:
    with HttpxTransport(server_config("https://127.0.0.1:8443"), env=NO_ENV) as t, \
            pytest.raises(ValueError, match="not on the configured server"):
        t("https://127.0.0.2:8443/v1/heartbeat", b"{}", deadline=1)


# ---- proxies ----


def test_tunnels_through_the_configured_connect_proxy(https: Any, ca_pem: Path) -> None:
    srv = https(reply(200, b"tunnelled"))
    with ConnectProxy() as proxy:
        cfg = server_config(srv.url, ca_bundle=ca_pem, proxy=proxy.url)
        assert post(cfg, env={"NO_PROXY": "*"}).body == b"tunnelled"
    assert proxy.targets == [srv.url.removeprefix("https://")]


def test_tunnels_through_https_proxy_from_the_environment(https: Any, ca_pem: Path) -> None:
    srv = https(reply(200, b"via env"))
    with ConnectProxy() as proxy:
        resp = post(server_config(srv.url, ca_bundle=ca_pem), env={"HTTPS_PROXY": proxy.url})
    assert resp.body == b"via env"
    assert proxy.targets == [srv.url.removeprefix("https://")]


@pytest.mark.parametrize(
    "no_proxy", ["127.0.0.1", "localhost", "127.0.0.0/8", ".example,127.0.0.1"]
)
def test_no_proxy_bypasses_the_environment_proxy(https: Any, ca_pem: Path, no_proxy: str) -> None:
    srv = https(reply(200, b"direct"))
    with ConnectProxy() as proxy:
        env = {"https_proxy": proxy.url, "NO_PROXY": no_proxy}
        assert post(server_config(srv.url, ca_bundle=ca_pem), env=env).body == b"direct"
    assert proxy.targets == []


def test_proxy_credentials_are_sent_to_the_proxy(https: Any, ca_pem: Path) -> None:
    srv = https(reply(200, b"authed"))
    with ConnectProxy("agent", "s3cret-pw") as proxy:
        cfg = server_config(srv.url, ca_bundle=ca_pem, proxy=proxy.url)
        with HttpxTransport(cfg, env=NO_ENV) as t:
            assert t(srv.url + "/v1/license", b"{}", deadline=5).body == b"authed"
            assert t.proxy == proxy.url.replace("s3cret-pw", "***")
    assert proxy.users == ["agent"]


def test_proxy_password_never_appears_in_errors(https: Any, ca_pem: Path) -> None:
    srv = https(reply(200))
    proxy_url = f"http://agent:s3cret-pw@127.0.0.1:{closed_port()}"
    err = failure(server_config(srv.url, ca_bundle=ca_pem, proxy=proxy_url))
    assert err.kind == "connect" and "proxy" in err.message
    assert "s3cret-pw" not in str(err) and "s3cret-pw" not in repr(err)


def test_proxy_refusing_the_tunnel_is_a_connect_error(https: Any, ca_pem: Path) -> None:
    srv = https(reply(200))
    with ConnectProxy("agent", "right") as proxy:
        wrong = proxy.url.replace(":right@", ":wrong@")
        err = failure(server_config(srv.url, ca_bundle=ca_pem, proxy=wrong))
    assert err.kind == "connect" and "407" in err.message and "wrong" not in err.message


@pytest.mark.skipif(importlib.util.find_spec("socksio") is not None, reason="socksio installed")
def test_socks_proxy_without_socksio_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"server\.proxy"):
        cfg = server_config("https://127.0.0.1:1", proxy="socks5://127.0.0.1:1")
        HttpxTransport(cfg, env=NO_ENV)


# ---- size limits ----


def hold_headers(length: int | None, headers: dict[str, str] | None = None) -> Any:
    """App: send headers (with Content-Length when given), then send nothing until the test ends."""

    def app(h: Handler, seen: Seen, stop: threading.Event) -> None:
        h.send_response(200)
        if length is not None:
            h.send_header("Content-Length", str(length))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.flush()
        stop.wait()

    return app


def test_content_length_over_the_cap_is_refused_before_reading(https: Any, ca_pem: Path) -> None:
    srv = https(hold_headers(10 * 2**20))
    start = time.monotonic()
    err = failure(server_config(srv.url, ca_bundle=ca_pem, max_response_bytes=65536), deadline=10)
    assert err.kind == "too_large" and time.monotonic() - start < 5


def test_chunked_body_over_the_cap_is_cut_off(https: Any, ca_pem: Path) -> None:
    def endless(h: Handler, seen: Seen, stop: threading.Event) -> None:
        h.send_response(200)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        chunk = b"a" * 8192
        while not stop.is_set():
            h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))

    srv = https(endless)
    err = failure(server_config(srv.url, ca_bundle=ca_pem, max_response_bytes=65536), deadline=10)
    assert err.kind == "too_large"


def test_gzip_bomb_is_cut_off_with_bounded_memory(https: Any, ca_pem: Path) -> None:
    bomb = gzip_bomb(256 * 2**20)  # 256 MiB decoded, ~260 KB on the wire, under the 1 MiB cap
    srv = https(reply(200, bomb, {"Content-Encoding": "gzip"}))
    cfg = server_config(srv.url, ca_bundle=ca_pem, max_response_bytes=2**20)
    tracemalloc.start()
    try:
        err = failure(cfg, deadline=10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.kind == "too_large"
    assert peak < 16 * 2**20


def test_unsupported_content_encoding_is_a_protocol_error(https: Any, ca_pem: Path) -> None:
    srv = https(reply(200, b"xx", {"Content-Encoding": "br"}))
    assert failure(server_config(srv.url, ca_bundle=ca_pem)).kind == "protocol"


def test_corrupt_gzip_body_is_a_protocol_error(https: Any, ca_pem: Path) -> None:
    body = bytearray(gzip.compress(b"y" * 1000))
    body[12:20] = b"\xff" * 8
    srv = https(reply(200, bytes(body), {"Content-Encoding": "gzip"}))
    assert failure(server_config(srv.url, ca_bundle=ca_pem)).kind == "protocol"


def test_truncated_gzip_body_is_a_protocol_error(https: Any, ca_pem: Path) -> None:
    srv = https(reply(200, gzip.compress(b"y" * 1000)[:-12], {"Content-Encoding": "gzip"}))
    assert failure(server_config(srv.url, ca_bundle=ca_pem)).kind == "protocol"


# ---- time ----


def test_slow_drip_body_is_cut_at_the_overall_deadline(https: Any, ca_pem: Path) -> None:
    def drip(h: Handler, seen: Seen, stop: threading.Event) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "100000")
        h.end_headers()
        while not stop.wait(0.05):
            h.wfile.write(b"x")
            h.wfile.flush()

    srv = https(drip)
    start = time.monotonic()
    err = failure(server_config(srv.url, ca_bundle=ca_pem, read_timeout=30), deadline=0.5)
    assert err.kind == "deadline"
    assert time.monotonic() - start < 0.5 + 1.5


def test_silent_server_hits_the_deadline_before_the_read_timeout(https: Any, ca_pem: Path) -> None:
    srv = https(lambda h, seen, stop: stop.wait())
    start = time.monotonic()
    err = failure(server_config(srv.url, ca_bundle=ca_pem, read_timeout=30), deadline=0.5)
    assert err.kind == "deadline" and time.monotonic() - start < 0.5 + 1.5


def test_read_timeout_shorter_than_the_deadline_is_a_timeout(https: Any, ca_pem: Path) -> None:
    srv = https(hold_headers(100))
    err = failure(server_config(srv.url, ca_bundle=ca_pem, read_timeout=0.2), deadline=10)
    assert err.kind == "timeout"


def test_closed_port_is_a_connect_error_returned_fast() -> None:
    start = time.monotonic()
    err = failure(server_config(f"https://127.0.0.1:{closed_port()}"), deadline=10)
    assert err.kind == "connect" and time.monotonic() - start < 3


# ---- redirects ----


def test_redirect_is_reported_and_not_followed(https: Any, ca_pem: Path) -> None:
    holder: list[str] = []
    srv = https(lambda h, seen, stop: reply(302, b"", {"Location": holder[0] + "/moved?t=tok"})(
        h, seen, stop))
    holder.append(srv.url)
    err = failure(server_config(srv.url, ca_bundle=ca_pem))
    assert (err.kind, err.status) == ("redirect", 302)
    assert len(srv.seen) == 1 and "tok" not in err.message


# ---- pure helpers ----


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "bypass"),
    [
        ("licensing.example", 443, "", False),
        ("licensing.example", 443, "*", True),
        ("licensing.example", 443, "example", True),
        ("licensing.example", 443, ".example", True),
        ("licensing.example", 443, "licensing.example.", True),
        ("licensing.example", 443, "ample", False),
        ("licensing.example", 443, "other.example, licensing.example:443", True),
        ("licensing.example", 443, "licensing.example:8443", False),
        ("10.1.2.3", 443, "10.0.0.0/8", True),
        ("10.1.2.3", 443, "10.1.2.4", False),
        ("10.1.2.3", 443, "2.3", False),
        ("10.1.2.3", 443, "10.1.2.3:443", True),
        ("::1", 443, "[::1]", True),
        ("::1", 443, "::1", True),
        ("[::1]", 443, "localhost", True),
        ("localhost", 443, "127.0.0.1", True),
        ("127.0.0.1", 443, "", False),
        ("fd00::5", 443, "fd00::/8", True),
    ],
)
def test_no_proxy_matching(host: str, port: int, no_proxy: str, bypass: bool) -> None:
    assert bypasses_proxy(host, port, no_proxy) is bypass


def test_proxy_selection_prefers_config_then_scheme_variable_then_all_proxy() -> None:
    url = "https://licensing.example"
    env = {"HTTPS_PROXY": "http://a:1", "ALL_PROXY": "http://b:1", "HTTP_PROXY": "http://c:1"}
    assert proxy_for(url, "http://cfg:1", env) == "http://cfg:1"
    assert proxy_for(url, None, env) == "http://a:1"
    assert proxy_for(url, None, {"ALL_PROXY": "http://b:1"}) == "http://b:1"
    assert proxy_for(url, None, {"HTTP_PROXY": "http://c:1"}) is None
    assert proxy_for(url, None, {**env, "no_proxy": ".example"}) is None
    assert proxy_for(url, None, {"https_proxy": "proxy:3128"}) == "http://proxy:3128"


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("http://u:pw@proxy:3128") == "http://u:***@proxy:3128"
    assert redact_url("http://proxy:3128") == "http://proxy:3128"


def test_translate_names_dns_failures() -> None:
    exc = httpx.ConnectError("x")
    exc.__cause__ = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    err = translate(exc, "https://licensing.example/v1/license")
    assert err.kind == "dns" and "licensing.example" in err.message


def test_send_returns_a_plain_function_transports_error_instead_of_raising() -> None:
    def down(url: str, body: bytes, *, deadline: float) -> HttpResponse:
        raise TransportError("connect", url, "refused")

    def up(url: str, body: bytes, *, deadline: float) -> HttpResponse:
        return HttpResponse(200, {}, body)

    assert isinstance(send(down, "https://h/x", b"", deadline=1), TransportError)
    assert send(up, "https://h/x", b"b", deadline=1) == HttpResponse(200, {}, b"b")


def test_http_response_repr_hides_the_body() -> None:
    assert "secret" not in repr(HttpResponse(200, {}, b'{"secret":"x"}'))


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("120", 120.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        ("-5", None),
        ("soon", None),
        ("1.5", None),
        ("", None),
        ("99999999999", 3600.0),
        ("9" * 5000, 3600.0),
        ("Tue, 14 Nov 2023 22:13:27 GMT", 7.0),  # NOW + 7 s
        ("Tue, 14 Nov 2023 22:13:00 GMT", 0.0),  # in the past: retry now
        ("Tuesday, 14-Nov-23 22:13:27 GMT", 7.0),
        ("Fri, 01 Jan 2100 00:00:00 GMT", 3600.0),
        ("Tue, 99 Nov 2023 22:15:20 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW, 3600.0) == expected


def test_system_trust_is_read_from_the_hashed_ca_directory(
    https: Any, ca_pem: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("the openssl command names hashed CA files; it is not installed")
    digest = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(ca_pem)], capture_output=True,
                            text=True, check=True).stdout.strip()
    (tmp_path / f"{digest}.0").write_bytes(ca_pem.read_bytes())
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))  # the system directory, as OpenSSL finds it
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    srv = https(reply(200, b"ok"))
    assert post(server_config(srv.url)).status == 200
