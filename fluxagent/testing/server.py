"""Reference license server: the protocol's reference verifier over real HTTP(S) (docs/PROTOCOL.md).

Standard library only on the serving side (http.server in a background thread), so vendors can
run it as is: `python -m fluxagent.testing.server --port 8443 --tls-cert C --tls-key K`.
Tests script misbehaviour with `Fault` values and read every request back from `.received`.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from types import FrameType, TracebackType
from typing import Any

import nacl.signing

from fluxagent.kinds import KIND_BY_ENDPOINT
from fluxagent.testing.server_faults import Fault, FaultQueue, gzip_of_zeros, zeros
from fluxagent.testing.server_http import (
    Answer,
    HTTPServer,
    HTTPServer6,
    error_body,
    rechunk,
    send,
)
from fluxagent.testing.server_offline import OFFLINE_ENDPOINT, BundleRefused
from fluxagent.testing.server_offline import answer_bundle as _answer_bundle
from fluxagent.testing.server_protocol import (
    IssuedCredential,
    LicensePolicy,
    Outcome,
    Verifier,
    build_receipt,
    peek,
)

__all__ = ["Fault", "IssuedCredential", "LicensePolicy", "Received", "ReferenceServer", "main"]

MAX_BODY = 8 * 1024 * 1024


@dataclass(frozen=True)
class Received:
    """One request as it arrived: endpoint, raw body, headers, answered status, decoded payload.

    status is 0 when the connection was closed without an answer. The payload is decoded when
    first asked for, not while the client waits for its answer (a full digest is tens of MB).
    """

    endpoint: str
    body: bytes
    headers: dict[str, str]
    status: int

    @functools.cached_property
    def payload(self) -> dict[str, Any] | None:
        """Return the decoded (unverified) payload object, or None if the body has none."""
        return peek(self.body)


class ReferenceServer:
    """The reference license server on a background thread; a context manager.

    url_host is the host in `.url` (default: host, or "localhost" for TLS on loopback, since
    test certificates name it); audience is the `aud` messages must carry (default: url_host;
    pass it for an IPv6 literal host, which the allowlist does not take as a hostname).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        signing_keys: list[nacl.signing.SigningKey] | None = None,
        clock: Callable[[], float] = time.time,
        license: LicensePolicy | None = None,
        url_host: str | None = None,
        audience: str | None = None,
        max_body: int = MAX_BODY,
        heartbeat_next_in: int | None = None,
        credentials_ttl: int = 900,
        verbose: bool = False,
    ) -> None:
        self.host, self.port, self.ssl_context = host, port, ssl_context
        self.signing_keys = list(signing_keys or [nacl.signing.SigningKey.generate() for _ in "ab"])
        self.receipt_key_index = 0  # which signing key signs receipts; change it to rotate
        # A certificate for "localhost" is what trustme and most test CAs issue.
        default_host = "localhost" if ssl_context and host in ("127.0.0.1", "::1") else host
        self.url_host = url_host or default_host
        self.clock, self.max_body, self.verbose = clock, max_body, verbose
        self.faults = FaultQueue()
        self.verifier = Verifier(
            audience=audience or self.url_host,
            clock=clock,
            license=license or LicensePolicy(),
            heartbeat_next_in=heartbeat_next_in,
            credentials_ttl=credentials_ttl,
        )
        self.offline_license_file: bytes | None = None  # sent with answers to offline bundles
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._arrivals: set[str] = set()  # endpoints a request body was read for, before any answer
        self._arrived = threading.Condition()
        self._httpd: HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----

    def start(self) -> ReferenceServer:
        """Bind, start serving on a background thread and return self."""
        cls = HTTPServer6 if ":" in self.host else HTTPServer
        httpd = cls((self.host, self.port), self)
        if self.ssl_context is not None:
            httpd.socket = self.ssl_context.wrap_socket(
                httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._stopping.clear()
        self._thread = threading.Thread(target=httpd.serve_until_woken, name="reference-server")
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections and release the port."""
        self._stopping.set()
        if self._httpd is None:
            return
        self._httpd.wake()
        if self._thread is not None:
            self._thread.join()
        self._httpd.drop_connections()
        self._httpd.server_close()
        self._httpd = self._thread = None

    def __enter__(self) -> ReferenceServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- what tests read and change ----

    @property
    def url(self) -> str:
        """Return the base URL, e.g. "http://127.0.0.1:PORT" or "https://localhost:PORT"."""
        host = f"[{self.url_host}]" if ":" in self.url_host else self.url_host
        return f"{'https' if self.ssl_context else 'http'}://{host}:{self.port}"

    @property
    def vendor_keys(self) -> list[bytes]:
        """Return the raw Ed25519 public keys an agent pins."""
        return [bytes(k.verify_key) for k in self.signing_keys]

    @property
    def vendor_keys_b64(self) -> list[str]:
        """Return the pinned public keys in base64, as config `server.vendor_keys` takes them."""
        return [base64.b64encode(k).decode("ascii") for k in self.vendor_keys]

    @property
    def received(self) -> list[Received]:
        """Return a snapshot of every request received so far, oldest first."""
        with self._lock:
            return list(self._received)

    def wait_arrival(self, endpoint: str, timeout: float = 10.0) -> bool:
        """Block until a request to endpoint has been read (it may still await its answer); False on timeout."""
        with self._arrived:
            return self._arrived.wait_for(lambda: endpoint in self._arrivals, timeout)

    def clear_received(self) -> None:
        """Forget the requests recorded so far."""
        with self._lock:
            self._received.clear()

    @property
    def license(self) -> LicensePolicy:
        """Return the live license policy; change its fields to change the next receipts."""
        return self.verifier.license

    @license.setter
    def license(self, policy: LicensePolicy) -> None:
        self.verifier.license = policy

    @property
    def issued_credentials(self) -> list[IssuedCredential]:
        """Return the update credentials issued so far."""
        return self.verifier.credentials()


    def forget_digests(self) -> None:
        """Drop every instance's digest token set, as a server that lost its state would."""
        self.verifier.forget_digests()

    def digest_tokens(self, iid: str) -> tuple[str | None, list[str], list[str]]:
        """Return (root, servers, networks) the server holds for instance iid."""
        return self.verifier.digest_tokens(iid)
    def credentials_valid(self, username: str, secret: str) -> bool:
        """Return whether these update credentials were issued and are unexpired (server clock)."""
        return self.verifier.credentials_valid(username, secret)

    def answer_bundle(self, bundle: bytes, license_file: bytes | None = None) -> bytes:
        """Return the signed answer to an offline bundle (with a renewed license file if given).

        Raises BundleRefused for a bundle that does not verify as a whole.
        """
        key = self.signing_keys[self.receipt_key_index]
        return _answer_bundle(self.verifier, bundle, key, int(self.clock()), license_file)

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each later request consumes the first one that matches it."""
        self.faults.push(*faults)

    # ---- serving ----

    def handle_post(self, h: BaseHTTPRequestHandler) -> None:
        """Read, check and answer one POST; record it in `.received` before answering."""
        path = h.path.split("?", 1)[0]
        headers = dict(h.headers.items())
        data = b""
        try:
            read = self._read_body(h)
            with self._arrived:
                self._arrivals.add(path)
                self._arrived.notify_all()
            if isinstance(read, Answer):
                answer = read
            else:
                data = read
                answer = self._answer(path, data)
        except OSError:  # the client went away or timed out mid-request
            answer = Answer(0)
        # Recorded first, so a test that has the response also finds the record.
        with self._lock:
            self._received.append(Received(path, data, headers, answer.status))
        if answer.status == 0:
            h.close_connection = True
        else:
            send(h, answer, self._stopping)

    def _read_body(self, h: BaseHTTPRequestHandler) -> bytes | Answer:
        """Return the request body, or the refusal to send instead."""
        length = h.headers.get("Content-Length")
        if h.headers.get("Transfer-Encoding") or length is None or not length.isdigit():
            h.close_connection = True  # the unread body would desync the connection
            return Answer(411, error_body("length_required", "send a Content-Length"))
        if int(length) > self.max_body:
            h.close_connection = True
            _drain(h, int(length), self.max_body * 8)
            return Answer(413, error_body("too_large", f"body over {self.max_body} bytes"))
        return h.rfile.read(int(length))

    def _answer(self, path: str, data: bytes) -> Answer:
        if path == OFFLINE_ENDPOINT:
            try:
                return Answer(200, self.answer_bundle(data, self.offline_license_file))
            except BundleRefused as exc:
                return Answer(exc.status, error_body(exc.code, exc.detail))
        fault = self.faults.take(path, KIND_BY_ENDPOINT.get(path))
        # Pure replacement faults leave the request unprocessed, so no seq is used up.
        genuine = fault is None or fault.process or (fault.code is None and not fault.hangup)
        outcome = self.verifier.handle(path, data) if genuine else None
        if fault is not None and fault.wait > 0:
            self._stopping.wait(fault.wait)
        if fault is not None and fault.hangup:
            return Answer(0)
        if fault is not None and fault.code is not None:
            return self._fault_answer(fault)
        assert outcome is not None
        return Answer(outcome.status, self._outcome_body(outcome, fault))

    def _outcome_body(self, outcome: Outcome, fault: Fault | None) -> bytes:
        if outcome.status != 200:
            return error_body(outcome.error, outcome.detail)
        key = self.signing_keys[self.receipt_key_index]
        mutate = fault.mutate if fault is not None else None
        return build_receipt(outcome, key, int(self.clock()), mutate)

    def _fault_answer(self, fault: Fault) -> Answer:
        headers = list(fault.headers)
        pieces: Iterable[bytes] = [fault.body]
        length = len(fault.body)
        if fault.gzip_bomb:
            bomb = gzip_of_zeros(fault.body_size)
            pieces, length = [bomb], len(bomb)
            headers.append(("Content-Encoding", "gzip"))
        elif fault.body_size:
            pieces, length = zeros(fault.body_size), fault.body_size
        if fault.chunk:
            pieces = rechunk(pieces, fault.chunk)
        code = fault.code or 200
        return Answer(code, pieces, headers, None if fault.chunked else length, fault.interval)


def _drain(h: BaseHTTPRequestHandler, length: int, limit: int) -> None:
    """Read and drop a refused body (up to limit) so the client gets the answer, not a reset."""
    left = min(length, limit)
    while left > 0:
        piece = h.rfile.read(min(left, 1 << 16))
        if not piece:
            return
        left -= len(piece)


def main(argv: list[str] | None = None) -> int:
    """Run the reference server until SIGINT/SIGTERM; print its URL and public vendor keys."""
    p = argparse.ArgumentParser(prog="python -m fluxagent.testing.server", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default: any free port)")
    p.add_argument("--tls-cert", help="PEM certificate chain; serve HTTPS")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--url-host", help="host name in the printed URL (default: --host)")
    p.add_argument("--audience", help="expected `aud` (default: the URL host)")
    p.add_argument("--credentials-ttl", type=int, default=900, help="lifetime of update credentials, s (default 900)")
    p.add_argument("--verbose", action="store_true", help="log each request to stderr")
    args = p.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    ctx = None
    if args.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
    server = ReferenceServer(
        host=args.host,
        port=args.port,
        ssl_context=ctx,
        url_host=args.url_host,
        audience=args.audience,
        credentials_ttl=args.credentials_ttl,
        verbose=args.verbose,
    )
    done = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with server:
        # Public keys only: the private keys never leave this process.
        print(json.dumps({"url": server.url, "vendor_keys": server.vendor_keys_b64}), flush=True)
        done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
