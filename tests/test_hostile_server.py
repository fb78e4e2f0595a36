"""A hostile license server, over real loopback HTTPS, against the whole delivery engine.

Each case scripts one misbehaviour of the reference server and drives `delivery.Engine` (real
HttpxTransport, real state directory, injected clock). For every case: flush returns (no crash),
memory stays bounded, nothing is trusted (no ledger "sent", no license-status.json), the message
stays spooled under its seq, a clear log event names the cause — and the next honest answer
delivers that same message.
"""

from __future__ import annotations

import datetime
import json
import random
import ssl
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import trustme
from conftest import base_config, fixed_world, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from support.capture import Events
from support.clock import Clock
from support.keys import vendor_keys

from fluxagent import config
from fluxagent.delivery import (
    LICENSE_STATUS_FILE,
    OUTAGE_SUMMARY_EVERY,
    RETRY_AFTER_CAP,
    SERVER_INTERVAL_CAP,
    Deps,
    Engine,
    FlushResult,
)
from fluxagent.license import record as license_store
from fluxagent.schema.approval import running_approved
from fluxagent.statedir import identity, state
from fluxagent.statedir.ledger import Ledger
from fluxagent.testing.server import Fault, ReferenceServer
from fluxagent.testing.workspace import approve_running
from fluxagent.transport import HttpxTransport, Plain
from fluxagent.wire.http import HttpResponse, parse_retry_after

CAP = 64 * 1024  # server.max_response_bytes in these tests
VENDOR = vendor_keys()


@dataclass
class Rig:
    engine: Engine
    server: ReferenceServer
    events: Events
    clock: Clock
    state_dir: Path

    def ledger_events(self) -> list[str]:
        return [e.event for e in Ledger(self.state_dir / "ledger", readonly=True).entries()]

    def spooled(self) -> list[int]:
        return [e.seq for e in self.engine.spool.entries()]


def server_context(leaf: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(ctx)
    return ctx


@pytest.fixture
def make_rig(tmp_path: Path, sample_db: Path, ca: trustme.CA, ca_pem: Path) -> Iterator[Callable[..., Rig]]:
    """Return rig(leaf=None): a reference server over HTTPS and an engine with one license spooled."""
    servers: list[ReferenceServer] = []
    transports: list[HttpxTransport] = []

    def rig(leaf: trustme.LeafCert | None = None, **server_cfg: Any) -> Rig:
        cert = leaf or ca.issue_cert("localhost", "127.0.0.1")
        server = ReferenceServer(ssl_context=server_context(cert), signing_keys=VENDOR).start()
        servers.append(server)
        state_dir = tmp_path / f"state{len(servers)}"
        server_cfg = {"url": server.url, "vendor_keys": server.vendor_keys_b64, "ca_bundle": str(ca_pem),
                      "connect_timeout": "1s", "read_timeout": "1s", "max_response_bytes": CAP, **server_cfg}
        cfg = config.from_mapping(base_config(state_dir, sample_db, server=server_cfg))
        ident, _ = identity.ensure(state_dir, now=int(time.time()))
        transport = HttpxTransport(cfg.server, env={})
        transports.append(transport)
        clock, events = Clock(), Events()
        engine = Engine(cfg, ident, Deps(transport, clock, rng=random.Random(7), world=fixed_world(), log=events,
                                          approval=running_approved))
        engine.produce(["license"], clock())
        return Rig(engine, server, events, clock, state_dir)

    yield rig
    for t in transports:
        t.close()
    for s in servers:
        s.stop()


def trusted_receipt(rig: Rig) -> Any:
    """Return the license receipt recorded in license-status.json, or None (nothing trusted yet)."""
    return license_store.parse(state.read_json(rig.state_dir / LICENSE_STATUS_FILE)).receipt


def assert_nothing_trusted(rig: Rig, result: FlushResult, cause: str) -> None:
    """The hostile answer was not trusted, the message is still queued, one clear warning says why."""
    assert result.retry is not None and not result.delivered and not result.rejected
    assert cause in result.retry.reason
    assert rig.spooled() == [1]
    assert "sent" not in rig.ledger_events()
    assert trusted_receipt(rig) is None
    started = rig.events.named("delivery.outage_started")
    assert len(started) == 1 and cause in started[0]["reason"]
    assert rig.engine.schedule.license.consecutive_failures == 1


def assert_recovers(rig: Rig) -> None:
    """The next honest answer delivers the same message (same seq): at-least-once, nothing lost."""
    rig.clock.now += 60
    result = rig.engine.flush()
    assert [e.seq for e, _ in result.delivered] == [1]
    assert rig.spooled() == []
    assert rig.ledger_events()[-1] == "sent" and rig.ledger_events().count("sent") == 1
    assert trusted_receipt(rig) is not None
    assert rig.events.named("delivery.recovered")
    assert {r.payload["seq"] for r in rig.server.received if r.payload} == {1}


def flush_traced(rig: Rig) -> tuple[FlushResult, int]:
    tracemalloc.start()
    try:
        result = rig.engine.flush()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, peak


# ---- bodies: size, encoding, shape ----

SIZE_FAULTS = {
    "content_length_over_cap": (Fault.oversized(64 * 2**20), "too_large"),
    "chunked_over_cap": (Fault.oversized(64 * 2**20, chunked=True), "too_large"),
    "gzip_bomb": (Fault.bomb(256 * 2**20), "too_large"),
}


@pytest.mark.parametrize("name", list(SIZE_FAULTS))
def test_oversized_and_bomb_answers_are_cut_off_with_bounded_memory_and_the_message_stays_spooled(
    make_rig: Callable[..., Rig], name: str
) -> None:
    fault, cause = SIZE_FAULTS[name]
    rig = make_rig()
    rig.server.inject(fault)
    result, peak = flush_traced(rig)
    assert_nothing_trusted(rig, result, cause)
    assert peak < 8 * 2**20, f"{name}: peak {peak} bytes for a {CAP}-byte cap"
    assert_recovers(rig)


@pytest.mark.slow
def test_slow_drip_answer_is_cut_at_the_overall_deadline(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()  # each piece arrives well within read_timeout, the whole answer never within the deadline
    deadline = rig.engine.config.server.request_deadline
    rig.server.inject(Fault.drip(10_000, chunk=16, interval=0.2))
    start = time.monotonic()
    result, peak = flush_traced(rig)
    elapsed = time.monotonic() - start
    assert_nothing_trusted(rig, result, "deadline")
    assert deadline - 0.5 < elapsed < deadline + 5.0  # the margin above is for a loaded machine
    assert peak < 8 * 2**20
    assert_recovers(rig)


BAD_BODIES = {
    "truncated_json": (Fault.receipt("truncated"), "bad_receipt: envelope is not JSON"),
    "json_array": (Fault.wrong_shape(), "bad_receipt: envelope is not a JSON object"),
    "object_without_envelope_fields": (Fault.wrong_shape(b'{"state":"valid"}'), "bad_receipt: envelope lacks"),
    "deeply_nested_json": (Fault.wrong_shape(b"[" * 50_000), "bad_receipt: envelope is not JSON"),
    "deeply_nested_object": (Fault.wrong_shape(b'{"a":' * 10_000), "bad_receipt: envelope is not JSON"),
    "not_utf8": (Fault.wrong_shape(b'{"payloadType":"\xff\xfe"}'), "bad_receipt: envelope is not JSON"),
    "empty_200": (Fault.wrong_shape(b""), "bad_receipt: envelope is not JSON"),
    "unsigned": (Fault.receipt("unsigned"), "bad_receipt: envelope carries no signature"),
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_malformed_receipt_bodies_are_not_trusted_and_the_message_stays_spooled(
    make_rig: Callable[..., Rig], name: str
) -> None:
    fault, cause = BAD_BODIES[name]
    rig = make_rig()
    rig.server.inject(fault)
    assert_nothing_trusted(rig, rig.engine.flush(), cause)
    assert_recovers(rig)


def test_envelope_with_thousands_of_signatures_is_refused_without_burning_cpu(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    junk = b'{"keyid":"","sig":"' + b"A" * 86 + b'=="}'
    body = b'{"payloadType":"application/vnd.fluxagent.receipt.v1+json","payload":"e30=","signatures":['
    body += b",".join([junk] * 500) + b"]}"
    rig.server.inject(Fault.wrong_shape(body))
    cpu = time.process_time()
    result = rig.engine.flush()
    assert time.process_time() - cpu < 0.5
    assert_nothing_trusted(rig, result, "bad_receipt: envelope carries more than")
    assert_recovers(rig)


# ---- receipts that verify as JSON but must not be trusted ----

RECEIPT_FAULTS = {
    "unpinned_key": "no trusted key verifies",
    "wrong_req": "req does not match",
    "wrong_nonce": "nonce does not match",
    "wrong_aud": "aud is not this instance",
    "wrong_type": "envelope type is",
}
MUTATION = {"unpinned_key": "unpinned"}


@pytest.mark.parametrize("name", list(RECEIPT_FAULTS))
def test_receipts_that_do_not_prove_delivery_of_this_message_are_not_trusted(
    make_rig: Callable[..., Rig], name: str
) -> None:
    rig = make_rig()
    rig.server.inject(Fault.receipt(MUTATION.get(name, name)))
    assert_nothing_trusted(rig, rig.engine.flush(), RECEIPT_FAULTS[name])
    assert_recovers(rig)  # the server processed it; the retry of the same seq is accepted again


def test_genuine_receipt_replayed_from_an_earlier_request_is_not_trusted(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    captured: list[bytes] = []
    real = rig.engine.deps.transport

    def recording(url: str, body: bytes, *, deadline: float) -> HttpResponse:
        response = real(url, body, deadline=deadline)
        captured.append(response.body)
        return response

    rig.engine.deps.transport = Plain(recording)
    assert rig.engine.flush().delivered  # seq 1 delivered; its genuine receipt captured
    rig.engine.produce(["license"], rig.clock())
    rig.server.inject(Fault.wrong_shape(captured[0]))  # the old, validly signed receipt again
    result = rig.engine.flush()
    assert result.retry is not None and "bad_receipt: receipt req does not match" in result.retry.reason
    assert rig.spooled() == [2]
    assert rig.ledger_events().count("sent") == 1  # seq 1 only; seq 2's attempt is not a delivery
    rig.clock.now += 60
    assert [e.seq for e, _ in rig.engine.flush().delivered] == [2]


# ---- redirects and TLS ----


def test_redirect_to_another_host_is_not_followed(make_rig: Callable[..., Rig], reference_server) -> None:
    rig = make_rig()
    elsewhere = reference_server(signing_keys=VENDOR)
    rig.server.inject(Fault.redirect(elsewhere.url + "/v1/license", 307))
    result = rig.engine.flush()
    assert elsewhere.received == []
    assert_nothing_trusted(rig, result, "redirect")
    assert result.retry is not None and "127.0.0.1" in result.retry.reason  # where it pointed, not followed
    assert_recovers(rig)


def past(days: int) -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=days)


@pytest.mark.parametrize("problem", ["wrong_hostname", "expired"])
def test_tls_certificate_problems_are_refused_and_nothing_is_sent_in_the_clear(
    make_rig: Callable[..., Rig], ca: trustme.CA, problem: str
) -> None:
    leaf = {
        "wrong_hostname": lambda: ca.issue_cert("licensing.other.example"),
        "expired": lambda: ca.issue_cert("localhost", not_before=past(30), not_after=past(1)),
    }[problem]()
    rig = make_rig(leaf)
    result = rig.engine.flush()
    assert_nothing_trusted(rig, result, "tls")
    assert result.retry is not None and "certificate" in result.retry.reason
    assert rig.server.received == []  # the handshake failed: no request body ever left


# ---- 429/503 storms and absurd Retry-After values ----

STORM = 12
# Retry-After value → the wait it must give: a number, or None for "the engine's own backoff"
RETRY_AFTER = {
    "absent": (None, None),
    "seconds": ("120", 120.0),
    "zero": ("0", None),  # no guidance: backoff, not a tight loop
    "negative": ("-5", None),
    "huge_digits": ("9" * 40, RETRY_AFTER_CAP),
    "date_far_future": ("Fri, 31 Dec 9999 23:59:59 GMT", RETRY_AFTER_CAP),
    "date_far_past": ("Thu, 01 Jan 1970 00:00:00 GMT", None),
    "garbage": ("soon, please", None),
    "float": ("1.5", None),
    "exponent": ("1e9", None),
    "nan": ("NaN", None),
    "year_10000": ("Sat, 01 Jan 10000 00:00:00 GMT", None),
    "bad_zone": ("Mon, 01 Jan 2024 00:00:00 +9999", None),
}


STORMS = [(429, n) for n in RETRY_AFTER] + [(503, n) for n in ("absent", "seconds", "huge_digits", "garbage")]


@pytest.mark.parametrize(("status", "name"), STORMS)
def test_busy_storm_with_any_retry_after_waits_a_sane_time_logs_once_and_then_delivers(
    make_rig: Callable[..., Rig], status: int, name: str
) -> None:
    value, expected = RETRY_AFTER[name]
    rig = make_rig()
    start = rig.clock()
    rig.server.inject(*[Fault.status(status, retry_after=value) for _ in range(STORM)])
    for _ in range(STORM):
        now = rig.clock()
        result = rig.engine.flush()
        assert result.retry is not None and result.retry.reason == f"http {status}"
        wait = rig.engine.retry_at - now
        if expected is None:
            assert 0 <= wait <= 3600  # full-jitter backoff, capped
        else:
            assert wait == pytest.approx(expected, abs=1.0)
        assert rig.spooled() == [1]
        rig.clock.now = max(rig.engine.retry_at, now) + 1
    assert len(rig.events.named("delivery.outage_started")) == 1  # one warning, no flood
    summaries = len(rig.events.named("delivery.outage_continues"))
    assert summaries <= 1 + (rig.clock() - start) // OUTAGE_SUMMARY_EVERY
    assert "sent" not in rig.ledger_events()
    assert_recovers(rig)
    assert len(rig.server.received) == STORM + 1


def test_connection_dropped_after_processing_is_retried_with_the_same_seq(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.server.inject(Fault.close(process=True))
    assert_nothing_trusted(rig, rig.engine.flush(), "connect")
    assert_recovers(rig)


def test_engine_keeps_working_while_the_server_misbehaves_in_every_way_in_turn(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    faults = [f for f, _ in SIZE_FAULTS.values()] + [f for f, _ in BAD_BODIES.values()]
    faults += [Fault.receipt(MUTATION.get(n, n)) for n in RECEIPT_FAULTS]
    faults += [Fault.status(429, retry_after="Fri, 31 Dec 9999 23:59:59 GMT"), Fault.close()]
    rig.server.inject(*faults)
    for i in range(len(faults)):
        result = rig.engine.flush()
        assert result.retry is not None and not result.delivered, i
        rig.clock.now = rig.engine.retry_at + 1
    assert rig.spooled() == [1]
    assert len(rig.events.named("delivery.outage_started")) == 1
    assert_recovers(rig)


HOSTILE_ERROR_BODIES = [b"[" * 4000, b'{"error":' * 1000, b"\xff" * 100, b'{"error":"' + b"\x1b[31m" * 500 + b'"}']


@pytest.mark.parametrize("body", HOSTILE_ERROR_BODIES)
def test_rejection_with_a_hostile_error_body_is_recorded_once_on_one_bounded_line(
    make_rig: Callable[..., Rig], body: bytes
) -> None:
    rig = make_rig()
    rig.server.inject(Fault.status(400, body=body))
    result = rig.engine.flush()
    assert [e.seq for e, _ in result.rejected] == [1] and rig.spooled() == []
    (entry,) = Ledger(rig.state_dir / "ledger", readonly=True).entries()
    assert entry.event == "rejected" and entry.http_status == 400
    assert entry.detail is not None and len(entry.detail) <= 300 and entry.detail.isprintable()
    assert rig.events.named("license.rejected")


@settings(max_examples=500, deadline=None)
@given(value=st.one_of(st.text(max_size=60), st.from_regex(r"-?[0-9]{1,30}", fullmatch=True),
                       st.datetimes(min_value=datetime.datetime(1, 1, 1), max_value=datetime.datetime(9999, 12, 31))
                       .map(lambda d: d.strftime("%a, %d %b %Y %H:%M:%S GMT"))))
def test_any_retry_after_value_gives_no_wait_or_a_wait_between_zero_and_the_cap(value: str) -> None:
    wait = parse_retry_after(value, time.time(), RETRY_AFTER_CAP)
    assert wait is None or 0 <= wait <= RETRY_AFTER_CAP


@pytest.mark.parametrize("value", ["0", "Thu, 01 Jan 1970 00:00:00 GMT"])
def test_retry_after_zero_or_in_the_past_storm_backs_off_instead_of_retrying_in_a_tight_loop(
    make_rig: Callable[..., Rig], value: str
) -> None:
    rig = make_rig()
    rig.server.inject(*[Fault.rate_limited(value) for _ in range(STORM)])
    start = rig.clock()
    for _ in range(STORM):
        rig.engine.flush()
        rig.clock.now = rig.engine.retry_at
    # full-jitter backoff doubles its range each time: 12 attempts take far more than 12 seconds
    assert rig.clock() - start > 600
    assert rig.spooled() == [1]


def test_server_interval_hints_lengthen_the_schedule_but_cannot_silence_the_agent(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    rig.server.license.next_check_in = 2**53 - 1  # a valid receipt field, absurdly long
    assert rig.engine.flush().delivered
    due = rig.engine.schedule.license.next_due
    assert due is not None and rig.clock() + 7 * 86400 < due <= rig.clock() + SERVER_INTERVAL_CAP


HOSTILE_HEADERS = {
    "one_huge_header": (("X-Junk", "a" * 200_000),),
    "thousands_of_headers": tuple((f"X-Junk-{i}", "b" * 40) for i in range(5000)),
}


@pytest.mark.parametrize("name", list(HOSTILE_HEADERS))
def test_oversized_response_headers_are_a_protocol_error_with_bounded_memory(
    make_rig: Callable[..., Rig], name: str
) -> None:
    rig = make_rig()
    rig.server.inject(Fault(code=200, headers=HOSTILE_HEADERS[name]))
    result, peak = flush_traced(rig)
    assert_nothing_trusted(rig, result, "protocol")
    assert peak < 8 * 2**20
    assert_recovers(rig)


def test_new_instance_whose_first_messages_wait_out_an_outage_loses_none_of_them(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()  # license seq 1 queued; the server is down from the first request
    rig.engine.produce(["heartbeat", "digest"], rig.clock())
    rig.server.inject(Fault.status(503))
    assert rig.engine.flush().retry is not None
    rig.clock.now += 7 * 3600  # the next license check and heartbeat come due while still queued
    rig.engine.produce(rig.engine.due(rig.clock()), rig.clock())
    rig.clock.now += 3600
    result = rig.engine.flush()
    assert not result.rejected, [(e.kind, r.reason) for e, r in result.rejected]
    assert {e.kind for e, _ in result.delivered} == {"license", "heartbeat", "digest"}
    assert rig.spooled() == []


def test_run_once_against_a_hostile_answer_exits_69_keeps_the_message_and_delivers_next_time(
    make_rig: Callable[..., Rig], tmp_path: Path
) -> None:
    rig = make_rig()
    path = tmp_path / "fluxagent.toml"
    path.write_text(tomli_w.dumps(config.to_mapping(rig.engine.config)), encoding="utf-8")
    approve_running(path)
    rig.server.inject(Fault.bomb(256 * 2**20))
    env = {"NO_PROXY": "127.0.0.1,localhost"}
    done = run_cli("--config", str(path), "run", "--once", env=env)
    assert done.returncode == 69, done.stderr
    assert '"event": "delivery.outage_started"' in done.stdout and "too_large" in done.stdout
    assert (rig.state_dir / "spool" / "new" / f"{1:020d}-license.json").exists()  # kept, not trusted
    done = run_cli("--config", str(path), "run", "--once", env=env)
    assert done.returncode == 0, done.stdout[-2000:]
    assert not list((rig.state_dir / "spool" / "new").iterdir())


@pytest.mark.parametrize("fault", [Fault.bomb(256 * 2**20), Fault.receipt("unpinned"), Fault.wrong_shape(b"[" * 50_000),
                                   Fault.rate_limited("Fri, 31 Dec 9999 23:59:59 GMT")],
                         ids=["gzip_bomb", "unpinned", "deeply_nested", "429_far_future"])
def test_validate_against_a_hostile_answer_fails_the_live_check_clearly_without_a_traceback(
    make_rig: Callable[..., Rig], tmp_path: Path, fault: Fault
) -> None:
    rig = make_rig()
    path = tmp_path / "fluxagent.toml"
    path.write_text(tomli_w.dumps(config.to_mapping(rig.engine.config)), encoding="utf-8")
    approve_running(path)
    rig.server.inject(fault)
    done = run_cli("--config", str(path), "validate", "--json", env={"NO_PROXY": "127.0.0.1,localhost"})
    assert "Traceback" not in done.stderr
    report = json.loads(done.stdout)
    assert done.returncode == report["exit_code"] and done.returncode in (1, 69)
    failed = [c for c in report["checks"] if c["level"] == "fail"]
    assert failed and all(c["reason"] for c in failed)
    assert trusted_receipt(rig) is None
