"""Any answer a server can give is a retry or a rejection, never a crash; each is ledgered once.

The answers are real bytes on a loopback socket (tests/support/rawhttp.py), so the HTTP parser,
the transport, `classify` and the ledger all see what a broken or hostile server really sends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import nacl.signing

from fluxagent.config import ServerConfig
from fluxagent.facts import Counts
from fluxagent.statedir.ledger import Ledger
from fluxagent.testing.workspace import make_workspace
from fluxagent.transport import HttpxTransport, send
from fluxagent.wire import messages
from fluxagent.wire.receipts import Rejected, Retry, classify
from tests.support.rawhttp import RawServer, response

NETWORK_EVENTS = ("attempt", "rejected", "sent", "failed")
INSTANCE = nacl.signing.SigningKey.generate()
VENDOR = bytes(nacl.signing.SigningKey.generate().verify_key)

# Location headers no URL parser makes sense of, or that point somewhere odd
BAD_LOCATIONS = ["http://[x", "http://[::1", "https://a:99999/", "http://a:-1/", "//\u00ff\u00fe", " ", "",
                 "javascript:alert(1)", "http://user:pw@[fe80::1%eth0]/", "h" * 9000, "http://%zz/", "\t"]
RETRY_AFTERS = ["0", "-1", "1.5", "99999999999999999999999", "9" * 5000, "Wed, 21 Oct 2015 07:28:00 GMT",
                "Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 99 Foo 0000 99:99:99 GMT", "soon", "", "  3  ", "\u00e9"]
CONTENT_TYPES = ["text/html", "application/json; charset=utf-16", "application/octet-stream",
                 "multipart/form-data; boundary=x", "application/dsse+json", "", ";;;", "\u00ff/\u00ff"]
BODIES = [b"", b"null", b"[]", b"{", b'{"error": 5}', b'{"error": "' + b"x" * 5000 + b'"}', b"\x00\xff" * 100,
          b'{"payloadType": "application/vnd.fluxagent.receipt.v1+json", "payload": "!!", "signatures": 7}']


# framing and header trouble that no well-formed response helper would produce
RAW_ODD = [
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(5000)) + b"Content-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip, gzip\r\nContent-Length: 2\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\nContent-Encoding: \xff\xfe\r\nContent-Length: 2\r\n\r\nab",
    b"HTTP/1.1 429 X\r\nRetry-After: \xff\xfe\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 302 X\r\nLocation: \xff\xfe://\x00\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/2 200 OK\r\n\r\n", b"FOO/1.1 200 OK\r\n\r\n", b"HTTP/1.1 200\r\n\r\n", b"\r\n\r\n", b"",
    b"HTTP/1.1 200 OK\n\nbare newlines",
]


def _sealed(seq: int) -> messages.Sealed:
    msg = messages.build_heartbeat("4.2.0", "billing.example", Counts(1, 2, 3))
    return messages.seal(msg, signing_key=INSTANCE, iid=str(uuid.uuid4()), aud="127.0.0.1", seq=seq,
                         now=int(time.time()), nonce=bytes(16))


def _odd_answers() -> list[bytes]:
    """Redirects with bad Locations, Retry-After variants, odd content types and bodies, bad status lines."""
    out = [response(code, [("Location", loc)]) for code in (301, 302, 307, 308, 399) for loc in BAD_LOCATIONS]
    out += [response(code, [("Retry-After", ra)]) for code in (429, 503, 200, 999) for ra in RETRY_AFTERS]
    out += [response(code, content_type=ct, body=b"{}") for code in (200, 400, 600) for ct in CONTENT_TYPES]
    out += [response(code, body=body) for code in (200, 201, 403, 500, 777) for body in BODIES]
    out += [response(200, content_type=None, body=b"{}"), response(200, [("Content-Encoding", "br")], b"{}"),
            response(200, [("Content-Encoding", "gzip")], b"not gzip"), response(200, [("X-\u00ff", "\u00ff")]),
            response("2OO"), response("-1"), response("+200"), response(" 200"), response("200.0"),
            response(0), response("000"), response(1000), response(99999999999999999999)]
    return out + RAW_ODD


def _drive(server: RawServer, count: int, tmp_path: Path) -> list[tuple[Retry | Rejected, int]]:
    """Send count requests through the real transport, classify each and ledger it; return outcomes."""
    ledger = Ledger(tmp_path / "ledger")
    outcomes: list[tuple[Retry | Rejected, int]] = []
    with HttpxTransport(ServerConfig(url=server.url, connect_timeout=5, read_timeout=5)) as tr:
        for seq in range(1, count + 1):
            sealed = _sealed(seq)
            answer = send(tr, server.url + sealed.endpoint, sealed.envelope, deadline=10)
            outcome = classify(sealed, answer, [VENDOR], time.time(), 3600)
            assert isinstance(outcome, Retry | Rejected), outcome
            status = outcome.status
            event, result = ("rejected", "rejected") if isinstance(outcome, Rejected) else ("attempt", "retry")
            ledger.append(now=int(time.time()), event=event, kind="heartbeat", outcome=result, seq=seq,
                          payload=sealed.payload, http_status=status, detail=outcome.reason)
            outcomes.append((outcome, seq))
    entries = [e for e in Ledger(tmp_path / "ledger", readonly=True).entries()]
    assert [e.seq for e in entries] == list(range(1, count + 1))  # each answer ledgered exactly once
    return outcomes


def test_every_status_code_from_0_to_1000_ends_as_retry_or_rejection_and_is_ledgered(tmp_path: Path) -> None:
    cases = [response(code) for code in range(0, 1001)]
    with RawServer(cases, response(503)) as srv:
        outcomes = _drive(srv, len(cases), tmp_path)
    by_code = dict(enumerate(o for o, _ in outcomes))
    for code in (0, 99, 100, 101, 199, 600, 999, 1000):  # not an HTTP status: nothing to judge the message by
        assert isinstance(by_code[code], Retry), (code, by_code[code])
    assert isinstance(by_code[404], Rejected) and isinstance(by_code[503], Retry)


def test_redirects_with_unparsable_locations_and_odd_headers_and_bodies_are_retries_or_rejections(
    tmp_path: Path,
) -> None:
    cases = _odd_answers()
    with RawServer(cases, response(503)) as srv:
        outcomes = _drive(srv, len(cases), tmp_path)
    redirects = [o for o, _ in outcomes[: 5 * len(BAD_LOCATIONS)]]
    odd = [o for o in redirects if not (isinstance(o, Retry) and o.reason.startswith(("redirect", "protocol")))]
    assert not odd, odd  # a redirect is never followed and never a verdict on the message
    for o, _ in outcomes:  # server text reaches the ledger bounded and printable
        assert len(o.reason) <= 300 and o.reason.isprintable()


def _wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def test_a_running_daemon_never_exits_on_any_server_answer_and_ledgers_each_one_once(tmp_path: Path) -> None:
    """`fluxagent run` against a server answering the fuzz cases: each request a credentials call prompts
    (the spool flush, then the credentials request) gets the next case; the daemon stays up throughout."""
    statuses = [0, 1, 99, 100, 101, 199, 204, 299, 304, 399, 400, 409, 429, 499, 503, 599, 600, 700, 999, 1000]
    cases = [response(s) for s in statuses]
    cases += [response(302, [("Location", loc)]) for loc in BAD_LOCATIONS[:6]]
    cases += [response(429, [("Retry-After", ra)]) for ra in RETRY_AFTERS[:8]]
    cases += [response(200, content_type=ct, body=b"{}") for ct in CONTENT_TYPES[:5]]
    cases += [response(200, body=b) for b in BODIES[:5]]
    w = make_workspace(tmp_path / "ws")
    with RawServer(cases, response(503, [("Retry-After", "3600")])) as srv:
        cfg_path = w.root / "fluxagent.toml"
        cfg_path.write_text(cfg_path.read_text().replace('url = "http://127.0.0.1:9"', f'url = "{srv.url}"'))
        env = {k: v for k, v in os.environ.items() if k != "FLUXAGENT_CONFIG"}
        env["FLUXAGENT_CONFIG"] = str(cfg_path)
        daemon = subprocess.Popen([sys.executable, "-m", "fluxagent", "run"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env)
        try:
            assert _wait_for(lambda: (w.cfg.instance.state_dir / "control.sock").exists(), 30)
            end = time.monotonic() + 240
            while srv.left() and time.monotonic() < end:
                assert daemon.poll() is None, daemon.communicate()
                subprocess.run([sys.executable, "-m", "fluxagent", "credentials"], env=env, capture_output=True,
                               timeout=120, check=False)  # fails (no credentials): it makes the daemon send
            assert srv.left() == 0, f"{srv.left()} cases never asked for"
            time.sleep(1)
            assert daemon.poll() is None, daemon.communicate()
        finally:
            daemon.send_signal(signal.SIGTERM)
            out, err = daemon.communicate(timeout=60)
        assert daemon.returncode == 0, err[-3000:]
        assert "Traceback" not in out + err
        requests = list(srv.requests)
    entries = [e for e in Ledger(w.cfg.instance.state_dir / "ledger", readonly=True).entries()
               if e.event in NETWORK_EVENTS]
    # every request the server saw is one ledger entry, in order, naming the message it answered
    assert [(e.endpoint, e.seq) for e in entries] == [(r.path, (r.payload or {}).get("seq")) for r in requests]
    answered = {r.case for r in requests if r.case is not None}
    assert answered == set(range(len(cases)))
    for e, r in zip(entries, requests, strict=True):
        if r.case is not None and r.case < len(statuses) and 100 <= statuses[r.case] <= 599 \
                and not 300 <= statuses[r.case] < 400 and statuses[r.case] >= 200:
            assert e.http_status == statuses[r.case]
