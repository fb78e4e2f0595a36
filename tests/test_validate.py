"""`fluxagent validate` run as a command against the reference server over loopback HTTPS: each
setup gives its documented line and exit code, and every network step returns within its deadline."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
import tomli_w
import trustme
from conftest import BOUND_DOMAIN, base_config, run_cli
from netutil import closed_port
from proxy import ConnectProxy
from support.keys import vendor_keys

from fluxagent.statedir import identity
from fluxagent.statedir.ledger import Ledger
from fluxagent.statedir.state import Seq
from fluxagent.testing.licenses import make_license
from fluxagent.testing.server import LicensePolicy, ReferenceServer
from fluxagent.testing.workspace import approve_running
from fluxagent.validate.check import Check, exit_code

LID = "FB-VAL-0001"


@pytest.fixture(scope="module")
def tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    return ctx


@dataclass
class Site:
    root: Path
    server: ReferenceServer
    doc: dict[str, Any]
    key: nacl.signing.SigningKey

    @property
    def config(self) -> Path:
        return self.root / "fluxagent.toml"

    @property
    def state_dir(self) -> Path:
        return Path(self.doc["instance"]["state_dir"])

    def write(self, **server: Any) -> Path:
        self.doc["server"].update(server)
        self.config.write_text(tomli_w.dumps(self.doc))
        return self.config

    def license(self, domain: str = BOUND_DOMAIN, servers: int = 500) -> Path:
        path = Path(self.doc["instance"]["license_file"])
        now = int(time.time())
        path.write_bytes(make_license(self.key, license_id=LID, bound_domain=domain, issued_at=now - 86400,
                                      expires_at=now + 365 * 86400, servers=servers))
        return path

    def validate(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, float]:
        start = time.monotonic()
        p = run_cli("--config", str(self.config), "validate", *args, env=env or {"NO_PROXY": "*"})
        return p.returncode, p.stdout + p.stderr, time.monotonic() - start


@pytest.fixture
def site(tmp_path: Path, sample_db: Path, tls: ssl.SSLContext, ca_pem: Path, reference_server) -> Iterator[Site]:
    keys = vendor_keys()
    policy = LicensePolicy(license_id=LID, expires_at=int(time.time()) + 365 * 86400,
                           grace_until=int(time.time()) + 379 * 86400)
    server = reference_server(ssl_context=tls, signing_keys=keys, license=policy)
    doc = base_config(tmp_path / "state", sample_db)
    doc["instance"]["license_file"] = str(tmp_path / "license.json")
    doc["server"].update(url=server.url, vendor_keys=server.vendor_keys_b64, ca_bundle=str(ca_pem),
                         connect_timeout="1s", read_timeout="2s")
    s = Site(tmp_path, server, doc, keys[0])
    s.write()
    s.license()
    identity.ensure(s.state_dir, now=int(time.time()))
    approve_running(s.config)
    yield s


def line(out: str, level: str, name: str) -> str:
    """Return the output line of check name, asserting its level."""
    for text in out.splitlines():
        if text[6:].startswith(name + " ") or text[6:] == name:
            assert text.startswith(level), out
            return text
    raise AssertionError(f"no {name!r} line in:\n{out}")


def names(out: str) -> list[str]:
    """Return the check names in output order."""
    return [t[6:21].strip() for t in out.splitlines() if t[:5].strip() in ("ok", "warn", "fail", "skip")]


def blackhole() -> socket.socket:
    """A listening loopback socket that completes TCP handshakes but never reads or answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s


def test_healthy_setup_passes_every_check_and_records_the_live_check_in_the_ledger(site: Site) -> None:
    code, out, _ = site.validate()
    assert code == 0, out
    for name in ("config", "identity", "license file", "database", "dns", "tcp", "proxy", "tls",
                 "license server", "clock", "license state"):
        line(out, "ok", name)
    assert "receipt verified" in line(out, "ok", "license server")
    assert "verified with server.ca_bundle" in line(out, "ok", "tls")
    assert [r.endpoint for r in site.server.received] == ["/v1/license"]
    entries = list(Ledger(site.state_dir / "ledger", readonly=True).entries())
    # the approval `init` wrote is ledgered by the first agent run that reads it
    assert [(e.kind, e.event, e.seq) for e in entries] == [("schema", "schema_approved", None), ("license", "sent", 1)]
    assert Seq(site.state_dir).last() == 1
    code, out, _ = site.validate()  # a second run uses the next seq: never reused
    assert code == 0, out
    assert Seq(site.state_dir).last() == 2
    state = json.loads((site.state_dir / "license-status.json").read_text())
    assert state["state"] == "valid" and state["receipt"]["license_id"] == LID


def test_json_output_lists_each_check_with_level_reason_fix_and_the_exit_code(site: Site) -> None:
    p = run_cli("--config", str(site.config), "validate", "--json", env={"NO_PROXY": "*"})
    doc = json.loads(p.stdout)
    assert p.returncode == doc["exit_code"] == 0
    assert {c["name"] for c in doc["checks"]} >= {"config", "tls", "license server", "license state"}
    assert all(set(c) == {"name", "level", "reason", "fix", "exit_code"} for c in doc["checks"])


def test_offline_skips_the_network_and_sends_nothing(site: Site) -> None:
    code, out, _ = site.validate("--offline")
    assert code == 0, out
    assert names(out) == ["config", "identity", "schema", "license file", "database", "network", "clock",
                          "license state"]
    line(out, "skip", "network")
    assert site.server.received == []


def test_wrong_ca_fails_the_tls_line_with_exit_78_a_configuration_error(site: Site, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    site.write(ca_bundle=str(other))
    code, out, _ = site.validate()
    assert code == 78, out
    assert "not trusted by server.ca_bundle" in line(out, "fail", "tls")
    assert "set server.ca_bundle" in out
    assert site.server.received == []


def test_closed_port_fails_the_tcp_line_with_exit_69(site: Site) -> None:
    site.write(url=f"https://localhost:{closed_port()}")
    code, out, elapsed = site.validate()
    assert code == 69, out
    assert "Connection refused" in line(out, "fail", "tcp")
    line(out, "skip", "license server")
    assert elapsed < 10


def test_blackholed_https_port_fails_the_tls_line_within_its_deadline(site: Site) -> None:
    with blackhole() as hole:
        site.write(url=f"https://localhost:{hole.getsockname()[1]}")
        code, out, elapsed = site.validate()
    assert code == 69, out
    line(out, "ok", "tcp")
    assert "no answer in time" in line(out, "fail", "tls")
    assert elapsed < 1 + 5  # connect_timeout 1 s plus the command's start-up


def test_blackholed_http_port_fails_the_live_check_within_its_deadline_and_keeps_the_message(site: Site) -> None:
    with blackhole() as hole:
        site.write(url=f"http://127.0.0.1:{hole.getsockname()[1]}", read_timeout="1s")
        code, out, elapsed = site.validate()
    assert code == 69, out
    assert "kept in the spool" in line(out, "fail", "license server")
    assert elapsed < 1 + 1 + 5  # connect and read timeouts plus start-up
    assert len(list((site.state_dir / "spool" / "new").iterdir())) == 1


def test_tampered_license_file_fails_the_license_line_with_exit_1(site: Site) -> None:
    path = site.license()
    env = json.loads(path.read_bytes())
    env["payload"] = env["payload"][:-8] + ("A" * 8 if not env["payload"].endswith("A" * 8) else "B" * 8)
    path.write_text(json.dumps(env))
    code, out, _ = site.validate("--offline")
    assert code == 1, out
    assert "license signature" in line(out, "fail", "license file")
    assert "restore the file the vendor issued" in out
    line(out, "fail", "license state")


def test_license_for_another_domain_fails_the_license_line_with_exit_1(site: Site) -> None:
    site.license(domain="other.example.org")
    code, out, _ = site.validate()
    assert code == 1, out
    assert "bound to 'other.example.org'" in line(out, "fail", "license file")
    assert "set instance.bound_domain" in out


def test_more_servers_than_the_license_allocates_is_a_warning(site: Site) -> None:
    site.license(servers=10)
    code, out, _ = site.validate("--offline")
    assert code == 0, out
    assert "more servers than the license allocates (10)" in line(out, "warn", "database")


def test_key_file_with_mode_0644_fails_the_identity_line_with_exit_78(site: Site) -> None:
    (site.state_dir / "signing.key").chmod(0o644)
    code, out, _ = site.validate()
    assert code == 78, out
    assert "mode 0644" in line(out, "fail", "identity")
    assert "chmod 600" in out
    line(out, "skip", "network")
    assert site.server.received == []  # nothing is sent without a trustworthy identity


def test_config_that_does_not_parse_fails_with_exit_78(site: Site) -> None:
    site.config.write_text("[instance\n")
    code, out, _ = site.validate()
    assert code == 78, out
    line(out, "fail", "config")


def test_revoked_license_fails_the_live_check_with_exit_1(site: Site) -> None:
    site.server.license = LicensePolicy(state="revoked", license_id=LID)
    code, out, _ = site.validate()
    assert code == 1, out
    assert "revoked" in line(out, "fail", "license server")
    assert "revoked" in line(out, "fail", "license state")


def test_checks_through_a_connect_proxy_step_by_step(site: Site) -> None:
    with ConnectProxy("op", "pw") as proxy:
        site.write(proxy=proxy.url)
        code, out, _ = site.validate(env={})
        assert code == 0, out
        assert "tunnel to localhost" in line(out, "ok", "proxy")
        assert "pw" not in out
        assert proxy.users and all(t.startswith("localhost:") for t in proxy.targets)


def test_another_process_holding_the_state_directory_without_a_daemon_turns_the_live_check_into_a_warning(
    site: Site,
) -> None:
    from fluxagent.statedir.lock import instance_lock

    with instance_lock(site.state_dir):
        code, out, _ = site.validate()
    assert code == 0, out
    assert "another process holds the state directory" in line(out, "warn", "license server")
    assert site.server.received == []


@pytest.mark.parametrize(
    ("codes", "expected"),
    [((), 0), ((69,), 69), ((69, 1), 1), ((1, 78, 69), 78), ((1, 74, 69), 74), ((74, 78), 78)],
)
def test_exit_code_prefers_configuration_then_disk_then_check_failures_then_unreachable(
    codes: tuple[int, ...], expected: int
) -> None:
    checks = [Check("x", "fail", "r", "f", c) for c in codes] + [Check("y", "warn", "r", "f", 1)]
    assert exit_code(checks) == expected


def test_no_secret_key_material_reaches_the_output(site: Site) -> None:
    code, out, _ = site.validate("--json")
    secrets = [(site.state_dir / n).read_bytes() for n in ("signing.key", "digest.key")]
    assert code == 0
    for s in secrets:
        assert s.hex() not in out and base64.b64encode(s).decode() not in out


# ---- a proxy or server dripping its answer a byte at a time meets each check's overall deadline,
# ---- not a per-read timeout that every new byte resets

DRIP_EVERY = 0.2  # well inside the 1 s connect_timeout the site uses, so no single read ever times out


@contextmanager
def dripper(first: bytes, then: bytes, *, read_request: bool) -> Iterator[int]:
    """A loopback server that answers `first`, then one byte of `then` every DRIP_EVERY s; yields its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        with conn:
            try:
                if read_request:
                    got = b""
                    while b"\r\n\r\n" not in got and not stop.is_set():
                        piece = conn.recv(4096)
                        if not piece:
                            return
                        got += piece
                conn.sendall(first)
                for i in range(len(then)):
                    if stop.wait(DRIP_EVERY):
                        return
                    conn.sendall(then[i:i + 1])
            except OSError:
                return

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()


def test_a_proxy_dripping_its_connect_answer_fails_the_proxy_check_within_its_deadline(site: Site) -> None:
    with dripper(b"HTTP/1.1 200 ", b"x" * 100_000, read_request=True) as port:
        site.write(proxy=f"http://127.0.0.1:{port}")
        code, out, elapsed = site.validate(env={"NO_PROXY": ""})
    assert code == 69, out
    assert "no answer in time" in line(out, "fail", "proxy")
    assert elapsed < 1 + 1 + 8, out  # dns/tcp, the proxy's own second, start-up


def test_a_server_dripping_its_tls_handshake_fails_the_tls_check_within_its_deadline(site: Site) -> None:
    # a TLS handshake record announcing 16 KiB, then its body one byte at a time
    with dripper(b"\x16\x03\x03\x40\x00", b"\x02\x00\x3f\xf0\x03\x03" + b"\x00" * 100_000, read_request=False) as port:
        site.write(url=f"https://localhost:{port}")
        code, out, elapsed = site.validate()
    assert code == 69, out
    assert "no answer in time" in line(out, "fail", "tls")
    assert elapsed < 1 + 1 + 8, out
