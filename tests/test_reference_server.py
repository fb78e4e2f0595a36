"""The reference license server over real loopback HTTP(S): protocol rules, receipts, faults."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nacl.signing
import pytest
import trustme

from fluxagent.errors import EnvelopeError
from fluxagent.facts import Counts
from fluxagent.identifiers import TokenSet
from fluxagent.testing.server import Fault, LicensePolicy, ReferenceServer
from fluxagent.testing.server_faults import gzip_of_zeros
from fluxagent.wire import envelope, messages

T0 = 1_760_000_000


class Clock:
    """An injected clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Agent:
    """A minimal agent: one identity, a seq counter, seal + post over httpx."""

    def __init__(self, client: httpx.Client, clock: Clock, aud: str) -> None:
        self.client, self.clock, self.aud = client, clock, aud
        self.key = nacl.signing.SigningKey.generate()
        self.iid = str(uuid.uuid4())
        self.seq = 0

    def seal(
        self,
        msg: messages.Message,
        *,
        seq: int | None = None,
        nonce: bytes | None = None,
        key: nacl.signing.SigningKey | None = None,
    ) -> messages.Sealed:
        if seq is None:
            self.seq += 1
            seq = self.seq
        return messages.seal(
            msg,
            signing_key=key or self.key,
            iid=self.iid,
            aud=self.aud,
            seq=seq,
            now=int(self.clock()),
            nonce=nonce or os.urandom(16),
        )

    def license(self) -> messages.Message:
        public_key = bytes(self.key.verify_key)
        return messages.build_license("billing.example.com", "FLX-1", "valid", public_key)

    def heartbeat(self, users: int = 7) -> messages.Message:
        return messages.build_heartbeat("4.12.3", "billing.example.com", Counts(3, users, 2))

    def post(self, sealed: messages.Sealed) -> httpx.Response:
        return self.client.post(sealed.endpoint, content=sealed.envelope)

    def send(self, msg: messages.Message, **kw: Any) -> tuple[messages.Sealed, httpx.Response]:
        sealed = self.seal(msg, **kw)
        return sealed, self.post(sealed)

    def register(self) -> None:
        assert self.send(self.license())[1].status_code == 200


def receipt(
    resp: httpx.Response, server: ReferenceServer, sealed: messages.Sealed
) -> dict[str, Any]:
    """Open a receipt with the pinned keys and check it answers sealed; return its payload."""
    assert resp.status_code == 200, resp.text
    obj = envelope.open_envelope(resp.content, server.vendor_keys, envelope.RECEIPT_TYPE).obj
    assert obj["aud"] == sealed.obj["iid"]
    assert obj["req"] == "sha256:" + hashlib.sha256(sealed.payload).hexdigest()
    assert obj["nonce"] == sealed.obj["nonce"]
    assert obj["v"] == 1
    return obj


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(clock: Clock, reference_server) -> Iterator[ReferenceServer]:
    srv = reference_server(clock=clock, max_body=64 * 1024)
    yield srv


@pytest.fixture(scope="module")
def tls() -> ssl.SSLContext:
    """One client TLS context for the module: httpx builds a costly one per Client otherwise."""
    return ssl.create_default_context()


@pytest.fixture
def client(server: ReferenceServer, tls: ssl.SSLContext) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10, verify=tls) as c:
        yield c


@pytest.fixture
def agent(server: ReferenceServer, client: httpx.Client, clock: Clock) -> Agent:
    return Agent(client, clock, server.verifier.audience)


# ---- the protocol ----


def test_license_registers_instance_then_heartbeat_gets_a_receipt_verified_by_pinned_keys(
    server: ReferenceServer, agent: Agent, clock: Clock
) -> None:
    sealed, resp = agent.send(agent.license())
    body = receipt(resp, server, sealed)["body"]
    assert body == {
        "state": "valid",
        "license_id": "FLX-TEST-0001",
        "expires_at": 4_102_444_800,
        "grace_until": 4_103_654_400,
        "next_check_in": 21600,
    }
    clock.now += 5
    sealed, resp = agent.send(agent.heartbeat())
    obj = receipt(resp, server, sealed)
    assert obj["body"] == {} and obj["ts"] == T0 + 5
    assert server.url.startswith("http://127.0.0.1:")
    assert len(server.vendor_keys) == 2 and len(server.vendor_keys_b64) == 2


def test_receipts_verify_over_https_with_a_test_ca(ca: trustme.CA, clock: Clock, reference_server) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    srv = reference_server(ssl_context=ctx, clock=clock)
    assert srv.url.startswith("https://localhost:")
    with httpx.Client(base_url=srv.url, verify=client_ctx, timeout=10) as c:
        agent = Agent(c, clock, srv.verifier.audience)
        assert agent.aud == "localhost"
        sealed, resp = agent.send(agent.license())
        receipt(resp, srv, sealed)
        sealed, resp = agent.send(agent.heartbeat())
        receipt(resp, srv, sealed)


def test_client_that_does_not_trust_the_certificate_fails_and_the_server_keeps_serving(
    ca: trustme.CA, clock: Clock, tls: ssl.SSLContext, reference_server
) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(ctx)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    srv = reference_server(ssl_context=ctx, clock=clock)
    with pytest.raises(httpx.ConnectError):
        httpx.post(srv.url + "/v1/license", content=b"{}", verify=tls)
    resp = httpx.post(srv.url + "/v1/license", content=b"{}", verify=trusting)
    assert resp.status_code == 400
    assert [r.status for r in srv.received] == [400]


def test_serves_ipv6_loopback_when_the_host_has_it(clock: Clock, tls: ssl.SSLContext, reference_server) -> None:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    srv = reference_server(host="::1", audience="localhost", clock=clock)
    assert srv.url.startswith("http://[::1]:")
    with httpx.Client(base_url=srv.url, timeout=10, verify=tls) as c:
        agent = Agent(c, clock, srv.verifier.audience)
        sealed, resp = agent.send(agent.license())
        receipt(resp, srv, sealed)


def test_message_from_an_unregistered_instance_is_refused_with_403(agent: Agent) -> None:
    _, resp = agent.send(agent.heartbeat())
    assert resp.status_code == 403 and resp.json()["error"] == "unknown_instance"


def test_envelope_signed_by_another_key_is_refused_401(agent: Agent) -> None:
    agent.register()
    _, resp = agent.send(agent.heartbeat(), key=nacl.signing.SigningKey.generate())
    assert resp.status_code == 401 and resp.json()["error"] == "bad_signature"


def test_license_signed_by_a_key_other_than_its_public_key_is_not_registered(
    server: ReferenceServer, agent: Agent
) -> None:
    _, resp = agent.send(agent.license(), key=nacl.signing.SigningKey.generate())
    assert resp.status_code == 401
    assert agent.send(agent.heartbeat())[1].status_code == 403


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"payloadType":"x"}'])
def test_malformed_envelope_is_400(client: httpx.Client, body: bytes) -> None:
    resp = client.post("/v1/heartbeat", content=body)
    assert resp.status_code == 400 and resp.json()["error"] == "bad_envelope"


def test_envelope_posted_to_the_wrong_endpoint_is_400(agent: Agent) -> None:
    agent.register()
    sealed = agent.seal(agent.heartbeat())
    resp = agent.client.post("/v1/digest", content=sealed.envelope)
    assert resp.status_code == 400 and resp.json()["error"] == "wrong_type"


def test_unknown_endpoint_is_404(client: httpx.Client) -> None:
    assert client.post("/v1/other", content=b"{}").status_code == 404


def test_reused_seq_with_a_different_payload_is_409(agent: Agent) -> None:
    agent.register()
    sealed, _ = agent.send(agent.heartbeat(users=1))
    _, resp = agent.send(agent.heartbeat(users=2), seq=sealed.obj["seq"])
    assert resp.status_code == 409 and resp.json()["error"] == "seq_reused"


def test_lower_unseen_seq_is_409(agent: Agent) -> None:
    agent.register()
    agent.send(agent.heartbeat(), seq=10)
    _, resp = agent.send(agent.heartbeat(), seq=5)
    assert resp.status_code == 409 and resp.json()["error"] == "seq_not_increasing"


def test_nonce_reused_with_another_seq_is_409(agent: Agent) -> None:
    agent.register()
    nonce = os.urandom(16)
    assert agent.send(agent.heartbeat(), nonce=nonce)[1].status_code == 200
    _, resp = agent.send(agent.heartbeat(), nonce=nonce)
    assert resp.status_code == 409 and resp.json()["error"] == "nonce_reused"


def test_exact_retry_is_accepted_with_a_fresh_receipt(
    server: ReferenceServer, agent: Agent, clock: Clock
) -> None:
    agent.register()
    sealed, first = agent.send(agent.heartbeat())
    clock.now += 60
    again = agent.post(sealed)
    r1, r2 = receipt(first, server, sealed), receipt(again, server, sealed)
    assert r2["ts"] == r1["ts"] + 60 and r2["req"] == r1["req"]


def test_field_off_the_allowlist_is_422(server: ReferenceServer, agent: Agent) -> None:
    agent.register()
    obj = agent.seal(agent.heartbeat()).obj
    obj["body"]["customer_email"] = "ann@example.com"  # seal refuses this; build it by hand
    payload = envelope.canonical_json(obj)
    env = envelope.sign_envelope(envelope.payload_type("heartbeat"), payload, agent.key)
    resp = agent.client.post("/v1/heartbeat", content=env)
    assert resp.status_code == 422 and "customer_email" in resp.json()["detail"]
    assert server.received[-1].payload == obj and server.received[-1].status == 422


def test_message_for_another_audience_is_refused(agent: Agent) -> None:
    agent.register()
    agent.aud = "licensing.other.example"
    _, resp = agent.send(agent.heartbeat())
    assert resp.status_code == 400 and resp.json()["error"] == "wrong_audience"


def test_future_ts_is_refused_but_a_late_spooled_message_is_accepted(
    agent: Agent, clock: Clock
) -> None:
    agent.register()
    spooled = agent.seal(agent.heartbeat())
    clock.now += 3 * 86400  # delivered three days late, after an outage
    assert agent.post(spooled).status_code == 200
    agent.clock = Clock(clock.now + 3600)  # an hour ahead: tolerated, the agent reports its own skew
    _, resp = agent.send(agent.heartbeat())
    assert resp.status_code == 200
    agent.clock = Clock(clock.now + 2 * 86400)  # two days ahead: beyond the server's tolerance
    _, resp = agent.send(agent.heartbeat())
    assert resp.status_code == 400 and resp.json()["error"] == "ts_future"


def test_license_receipt_follows_the_policy_changed_at_runtime(
    server: ReferenceServer, agent: Agent
) -> None:
    agent.register()
    server.license.state = "revoked"
    server.license.next_check_in = 600
    sealed, resp = agent.send(agent.license())
    body = receipt(resp, server, sealed)["body"]
    assert body["state"] == "revoked" and body["next_check_in"] == 600
    server.license = LicensePolicy(state="grace", license_id=None)
    sealed, resp = agent.send(agent.license())
    assert receipt(resp, server, sealed)["body"]["state"] == "grace"


def test_license_from_a_registered_instance_with_a_new_public_key_is_409(agent: Agent) -> None:
    agent.register()
    other = bytes(nacl.signing.SigningKey.generate().verify_key)
    msg = messages.build_license("billing.example.com", "FLX-1", "valid", other)
    _, resp = agent.send(msg)
    assert resp.status_code == 409 and resp.json()["error"] == "key_conflict"


def test_heartbeat_receipt_carries_next_in_when_configured(
    clock: Clock, tls: ssl.SSLContext
) -> None:
    srv = ReferenceServer(clock=clock, heartbeat_next_in=7200)
    with srv, httpx.Client(base_url=srv.url, verify=tls) as c:
        agent = Agent(c, clock, srv.verifier.audience)
        agent.register()
        sealed, resp = agent.send(agent.heartbeat())
        assert receipt(resp, srv, sealed)["body"] == {"next_in": 7200}


def _tokens(*names: bytes) -> TokenSet:
    tokens = TokenSet()
    for name in names:
        tokens.servers.append(hashlib.blake2b(name, digest_size=16).digest())
    tokens.networks.append(hashlib.blake2b(b"net", digest_size=16).digest())
    return tokens.finish()


def test_digest_asks_for_the_full_lists_only_when_the_root_is_not_the_stored_one(
    server: ReferenceServer, agent: Agent
) -> None:
    agent.register()
    one, two = _tokens(b"a", b"b"), _tokens(b"c")

    def need_full(msg: messages.Message) -> bool:
        sealed, resp = agent.send(msg)
        return bool(receipt(resp, server, sealed)["body"]["need_full"])

    assert need_full(messages.build_digest(one, "0" * 16, one.root)) is True  # nothing stored yet
    assert need_full(messages.build_digest(one, "0" * 16, None)) is False  # full: root stored
    assert need_full(messages.build_digest(one, "0" * 16, one.root)) is False
    assert need_full(messages.build_digest(two, "0" * 16, two.root)) is True


def test_full_digest_whose_root_does_not_match_its_lists_is_422(agent: Agent) -> None:
    agent.register()
    msg = messages.build_digest(_tokens(b"a"), "0" * 16, None)
    msg.body["root"] = "f" * 64
    _, resp = agent.send(msg)
    assert resp.status_code == 422 and resp.json()["error"] == "digest_root"


def test_update_credentials_are_fresh_each_time_and_expire_by_the_server_clock(
    server: ReferenceServer, agent: Agent, clock: Clock
) -> None:
    agent.register()
    bodies = []
    for _ in range(2):
        sealed, resp = agent.send(messages.build_credentials())
        bodies.append(receipt(resp, server, sealed)["body"])
    assert bodies[0]["secret"] != bodies[1]["secret"]
    assert bodies[0]["expires_in"] == 900 and bodies[0]["username"] == f"instance-{agent.iid}"
    issued = server.issued_credentials
    assert [c.secret for c in issued] == [b["secret"] for b in bodies]
    assert issued[0].expires_at == T0 + 900
    assert server.credentials_valid(bodies[0]["username"], bodies[0]["secret"])
    clock.now += 900
    assert not server.credentials_valid(bodies[0]["username"], bodies[0]["secret"])


# ---- transport limits and the record of what arrived ----


def test_every_request_body_is_recorded_with_its_status(
    server: ReferenceServer, agent: Agent
) -> None:
    sealed, _ = agent.send(agent.license())
    agent.client.post("/v1/heartbeat", content=b"junk")
    got = server.received
    assert [(r.endpoint, r.status) for r in got] == [("/v1/license", 200), ("/v1/heartbeat", 400)]
    assert got[0].body == sealed.envelope and got[0].payload == sealed.obj
    assert got[1].body == b"junk" and got[1].payload is None
    assert got[0].headers["Content-Length"] == str(len(sealed.envelope))


def test_request_body_over_the_limit_is_413(server: ReferenceServer, client: httpx.Client) -> None:
    resp = client.post("/v1/heartbeat", content=b"x" * (64 * 1024 + 1))
    assert resp.status_code == 413 and server.received[-1].status == 413


def test_request_without_content_length_is_411(client: httpx.Client) -> None:
    resp = client.post("/v1/heartbeat", content=iter([b"{}"]))  # httpx sends this chunked
    assert resp.status_code == 411


def test_get_is_405(client: httpx.Client) -> None:
    assert client.get("/v1/license").status_code == 405


# ---- scripted faults ----


@pytest.mark.parametrize(
    ("fault", "code", "retry_after"),
    [
        (Fault.status(503, retry_after="120"), 503, "120"),
        (Fault.rate_limited("Wed, 21 Oct 2015 07:28:00 GMT"), 429, "Wed, 21 Oct 2015 07:28:00 GMT"),
        (Fault.rate_limited(), 429, None),
        (Fault.status(502), 502, None),
    ],
)
def test_status_fault_answers_its_status_and_retry_after_without_using_the_seq(
    server: ReferenceServer, agent: Agent, fault: Fault, code: int, retry_after: str | None
) -> None:
    agent.register()
    server.inject(fault)
    sealed, resp = agent.send(agent.heartbeat())
    assert resp.status_code == code and resp.headers.get("Retry-After") == retry_after
    receipt(agent.post(sealed), server, sealed)  # the retry is new to the server: accepted
    assert len(server.faults) == 0


def test_processed_request_whose_answer_was_lost_is_accepted_again_on_retry(
    server: ReferenceServer, agent: Agent
) -> None:
    agent.register()
    server.inject(Fault.close(process=True))
    sealed = agent.seal(agent.heartbeat())
    with pytest.raises(httpx.RemoteProtocolError):
        agent.post(sealed)
    assert server.received[-1].status == 0
    receipt(agent.post(sealed), server, sealed)


def test_fault_for_one_endpoint_waits_for_a_request_to_it(
    server: ReferenceServer, agent: Agent
) -> None:
    server.inject(Fault.status(500, endpoint="heartbeat"))
    agent.register()  # a license request passes untouched
    assert agent.send(agent.heartbeat())[1].status_code == 500
    assert agent.send(agent.heartbeat())[1].status_code == 200


@pytest.mark.parametrize("code", [301, 302, 307])
def test_redirect_fault_sends_location(server: ReferenceServer, agent: Agent, code: int) -> None:
    server.inject(Fault.redirect("https://evil.example/v1/heartbeat", code))
    _, resp = agent.send(agent.license())
    assert resp.status_code == code
    assert resp.headers["Location"] == "https://evil.example/v1/heartbeat"


def test_delay_fault_answers_normally(server: ReferenceServer, agent: Agent) -> None:
    server.inject(Fault.delay(0.01))
    sealed, resp = agent.send(agent.license())
    receipt(resp, server, sealed)


def test_drip_fault_sends_the_whole_body_in_small_pieces(
    server: ReferenceServer, agent: Agent
) -> None:
    server.inject(Fault.drip(total_bytes=40, chunk=10, interval=0.001))
    sealed = agent.seal(agent.license())
    with agent.client.stream("POST", sealed.endpoint, content=sealed.envelope) as resp:
        assert resp.headers["Content-Length"] == "40"
        assert b"".join(resp.iter_raw()) == bytes(40)


def test_oversized_fault_declares_its_length(server: ReferenceServer, agent: Agent) -> None:
    server.inject(Fault.oversized(3 * 1024 * 1024))
    sealed = agent.seal(agent.license())
    with agent.client.stream("POST", sealed.endpoint, content=sealed.envelope) as resp:
        assert resp.headers["Content-Length"] == str(3 * 1024 * 1024)
        assert sum(len(p) for p in resp.iter_raw()) == 3 * 1024 * 1024


def test_oversized_chunked_fault_has_no_content_length(
    server: ReferenceServer, agent: Agent
) -> None:
    server.inject(Fault.oversized(3 * 1024 * 1024 + 5, chunked=True))
    sealed = agent.seal(agent.license())
    with agent.client.stream("POST", sealed.endpoint, content=sealed.envelope) as resp:
        assert "Content-Length" not in resp.headers
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert sum(len(p) for p in resp.iter_raw()) == 3 * 1024 * 1024 + 5


def test_gzip_bomb_fault_is_a_small_gzip_body_of_many_zeros(
    server: ReferenceServer, agent: Agent
) -> None:
    size = 64 * 1024 * 1024
    server.inject(Fault.bomb(size))
    sealed = agent.seal(agent.license())
    with agent.client.stream("POST", sealed.endpoint, content=sealed.envelope) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        raw = b"".join(resp.iter_raw())
    assert len(raw) < size // 500
    inflated = zlib.decompressobj(wbits=31).decompress(raw, 1 << 20)
    assert inflated == bytes(1 << 20)


def test_gzip_of_zeros_is_a_valid_gzip_stream() -> None:
    size = 3 * 1024 * 1024 + 17
    assert gzip.decompress(gzip_of_zeros(size)) == bytes(size)


def test_wrong_shape_fault_is_json_but_not_an_envelope(
    server: ReferenceServer, agent: Agent
) -> None:
    server.inject(Fault.wrong_shape())
    _, resp = agent.send(agent.license())
    assert resp.status_code == 200 and isinstance(resp.json(), list)
    with pytest.raises(EnvelopeError):
        envelope.open_envelope(resp.content, server.vendor_keys, envelope.RECEIPT_TYPE)


@pytest.mark.parametrize("mutation", ["truncated", "unsigned", "unpinned", "wrong_type"])
def test_spoiled_receipt_does_not_verify_against_the_pinned_keys(
    server: ReferenceServer, agent: Agent, mutation: str
) -> None:
    server.inject(Fault.receipt(mutation))
    _, resp = agent.send(agent.license())
    assert resp.status_code == 200
    with pytest.raises(EnvelopeError):
        envelope.open_envelope(resp.content, server.vendor_keys, envelope.RECEIPT_TYPE)
    if mutation == "unsigned":
        assert json.loads(resp.content)["signatures"] == []


@pytest.mark.parametrize(
    ("mutation", "field"), [("wrong_req", "req"), ("wrong_nonce", "nonce"), ("wrong_aud", "aud")]
)
def test_receipt_for_another_request_verifies_but_does_not_match(
    server: ReferenceServer, agent: Agent, mutation: str, field: str
) -> None:
    server.inject(Fault.receipt(mutation))
    sealed, resp = agent.send(agent.license())
    obj = envelope.open_envelope(resp.content, server.vendor_keys, envelope.RECEIPT_TYPE).obj
    expected = {
        "req": "sha256:" + hashlib.sha256(sealed.payload).hexdigest(),
        "nonce": sealed.obj["nonce"],
        "aud": agent.iid,
    }
    assert obj[field] != expected[field]
    assert all(obj[k] == v for k, v in expected.items() if k != field)
    receipt(agent.post(sealed), server, sealed)  # processed: the exact retry gets a good one


def test_receipts_can_be_signed_with_the_second_vendor_key(
    server: ReferenceServer, agent: Agent
) -> None:
    server.receipt_key_index = 1
    sealed, resp = agent.send(agent.license())
    assert receipt(resp, server, sealed)
    assert envelope.open_envelope(resp.content, server.vendor_keys[1:], envelope.RECEIPT_TYPE)


def test_unknown_receipt_mutation_is_refused_when_scripted() -> None:
    with pytest.raises(ValueError):
        Fault.receipt("sideways")


def test_stop_does_not_wait_out_a_scripted_delay(server: ReferenceServer, agent: Agent) -> None:
    server.inject(Fault.delay(600))
    sealed = agent.seal(agent.license())
    outcome: list[object] = []

    def post() -> None:
        try:
            outcome.append(agent.post(sealed).status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=post)
    thread.start()
    deadline = time.monotonic() + 10
    while len(server.faults) and time.monotonic() < deadline:  # until the delay has begun
        time.sleep(0.001)
    server.stop()
    thread.join(timeout=10)
    assert not thread.is_alive() and outcome


def test_exact_retry_of_a_credentials_request_issues_new_credentials(
    server: ReferenceServer, agent: Agent
) -> None:
    agent.register()
    sealed, first = agent.send(messages.build_credentials())
    again = agent.post(sealed)
    s1 = receipt(first, server, sealed)["body"]["secret"]
    assert receipt(again, server, sealed)["body"]["secret"] != s1


# ---- standalone ----


def test_standalone_prints_url_and_public_keys_then_serves_https(
    ca: trustme.CA, tmp_path: Path
) -> None:
    cert = ca.issue_cert("localhost")
    cert_pem, key_pem = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    argv = [sys.executable, "-m", "fluxagent.testing.server", "--port", "0"]
    argv += ["--tls-cert", str(cert_pem), "--tls-key", str(key_pem), "--url-host", "localhost"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            info = json.loads(proc.stdout.readline())
            assert set(info) == {"url", "vendor_keys"}
            assert info["url"].startswith("https://localhost:")
            keys = [base64.b64decode(k) for k in info["vendor_keys"]]
            assert len(keys) == 2 and all(len(k) == 32 for k in keys)
            client_ctx = ssl.create_default_context()
            ca.configure_trust(client_ctx)
            with httpx.Client(base_url=info["url"], verify=client_ctx, timeout=10) as c:
                # The standalone server runs on the real clock, so this agent does too.
                agent = Agent(c, Clock(time.time()), "localhost")
                sealed, resp = agent.send(agent.license())
                assert resp.status_code == 200
                obj = envelope.open_envelope(resp.content, keys, envelope.RECEIPT_TYPE).obj
                assert obj["req"] == "sha256:" + hashlib.sha256(sealed.payload).hexdigest()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    assert proc.returncode == 0


def test_a_license_file_is_never_accepted_as_the_instance_license_message() -> None:
    key = nacl.signing.SigningKey.generate()
    with ReferenceServer() as srv:
        sealed = messages.seal(messages.build_license("billing.example.com", None, "unlicensed", bytes(key.verify_key)),
                               signing_key=key, iid=str(uuid.uuid4()), aud="127.0.0.1", seq=1, now=int(time.time()),
                               nonce=bytes(16))
        as_file = envelope.sign_envelope("application/vnd.fluxagent.license-file.v1+json", sealed.payload, key)
        refused = httpx.post(srv.url + "/v1/license", content=as_file)
        assert 400 <= refused.status_code < 500, refused.text
        assert httpx.post(srv.url + "/v1/license", content=sealed.envelope).status_code == 200


def _big_digest(agent: Agent, n: int = 40_000) -> messages.Message:
    from fluxagent.identifiers import TokenList

    toks = TokenSet(TokenList(os.urandom(16) for _ in range(n)), TokenList()).finish()
    return messages.build_digest(toks, "0123456789abcdef", None)


def _post_whole(agent: Agent, sealed: messages.Sealed) -> httpx.Response:
    return agent.client.post(sealed.endpoint, content=b"".join(sealed.envelope_chunks()))


@pytest.fixture
def roomy(clock: Clock, tls: ssl.SSLContext, reference_server) -> Iterator[tuple[Agent, ReferenceServer]]:
    """An agent and a server taking bodies of a few MB."""
    srv = reference_server(clock=clock, max_body=8 << 20)
    with httpx.Client(base_url=srv.url, timeout=30, verify=tls) as c:
        yield Agent(c, clock, srv.verifier.audience), srv


def test_a_digest_over_a_mebibyte_is_verified_beside_the_other_checks_and_its_answer_is_the_same(
    roomy: tuple[Agent, ReferenceServer],
) -> None:
    agent, server = roomy
    agent.register()
    sealed = agent.seal(_big_digest(agent))
    assert sealed.payload_size > 1 << 20  # the size from which the signature is checked in a thread
    resp = _post_whole(agent, sealed)
    assert resp.status_code == 200, resp.text
    obj = envelope.open_envelope(resp.content, server.vendor_keys, envelope.RECEIPT_TYPE).obj
    assert obj["req"] == "sha256:" + sealed.payload_sha256 and obj["body"] == {"need_full": False}
    assert _post_whole(agent, sealed).status_code == 200  # an exact resend: same payload hash, answered again
    forged = agent.seal(_big_digest(agent), key=nacl.signing.SigningKey.generate())
    resp = _post_whole(agent, forged)
    assert resp.status_code == 401 and resp.json()["error"] == "bad_signature"


def test_a_large_payload_with_a_bad_signature_and_a_field_off_the_allowlist_is_refused_for_its_signature(
    roomy: tuple[Agent, ReferenceServer],
) -> None:
    agent, _server = roomy
    agent.register()
    sealed = agent.seal(_big_digest(agent))
    obj = json.loads(b"".join(sealed.payload_chunks()) if sealed.streamed is None else
                     b"".join(sealed.streamed.payload_chunks()))
    obj["body"]["customer_emails"] = ["someone@example.com"]
    obj["seq"] = agent.seq = agent.seq + 1
    payload = envelope.canonical_json(obj)
    assert len(payload) > 1 << 20
    stranger = nacl.signing.SigningKey.generate()
    resp = agent.client.post("/v1/digest", content=envelope.sign_envelope(envelope.payload_type("digest"), payload,
                                                                         stranger))
    assert resp.status_code == 401 and resp.json()["error"] == "bad_signature"
    signed = envelope.sign_envelope(envelope.payload_type("digest"), payload, agent.key)
    resp = agent.client.post("/v1/digest", content=signed)
    assert resp.status_code == 422 and resp.json()["error"] == "allowlist"
