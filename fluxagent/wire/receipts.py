"""Receipt verification and response classification: pure functions from a response to an Outcome.

A message counts as delivered only when a pinned vendor key signed a receipt that names this
request (`req`), echoes its nonce and is addressed to this instance (docs/PROTOCOL.md §4). Anything less is
a failed delivery and the message stays in the spool.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fluxagent.errors import EnvelopeError, FluxError
from fluxagent.kinds import RECEIPT_STATES
from fluxagent.wire.envelope import RECEIPT_TYPE, open_envelope
from fluxagent.wire.http import NOT_SENT_KINDS, HttpResponse, TransportError, parse_retry_after
from fluxagent.wire.messages import Sealed

RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Update credentials are short-lived by contract (docs/PROTOCOL.md §4): a receipt granting more is
# a bad receipt, never credentials that outlive their purpose on this machine.
MAX_CREDENTIALS_TTL = 86400
SECRET_KEYS = frozenset({"secret"})
_MAX_INT = 2**53


class ReceiptError(FluxError):
    """A receipt that must not be trusted: bad signature, wrong request, or wrong shape."""

    code = "receipt"


@dataclass(frozen=True)
class Delivered:
    """The server acknowledged the message with a verified receipt."""

    receipt_body: dict[str, Any]
    server_ts: int
    receipt_sha256: str  # hex SHA-256 of the signed receipt payload bytes
    status: int
    skew: float  # server ts − local now, seconds; positive when the local clock is behind

    def __repr__(self) -> str:
        return (
            f"Delivered(status={self.status}, server_ts={self.server_ts}, skew={self.skew:g},"
            f" receipt_sha256={self.receipt_sha256!r}, receipt_body={redact(self.receipt_body)!r})"
        )


@dataclass(frozen=True)
class Retry:
    """Not delivered, try again later: after `after` seconds if the server said so."""

    after: float | None
    reason: str
    status: int | None
    sent: bool = True  # False when no connection was made (connect, DNS, TLS): nothing left the machine
    config: bool = False  # the cause is this machine's setup (an untrusted server certificate), not the network


@dataclass(frozen=True)
class Rejected:
    """The server refused the message for good; record it, never resend it."""

    status: int
    reason: str


Outcome = Delivered | Retry | Rejected


def redact(body: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of a receipt body with secrets replaced, safe to log or print."""
    return {k: ("<redacted>" if k in SECRET_KEYS else v) for k, v in body.items()}


def classify(
    sealed: Sealed,
    response: HttpResponse | TransportError,
    vendor_keys: Iterable[bytes],
    now: float,
    retry_cap: float,
) -> Outcome:
    """Return what a response to sealed means: Delivered, Retry or Rejected.

    200 with a verified receipt → Delivered; 200 without one → Retry ("bad_receipt: …"), since an
    unverifiable acknowledgement proves nothing. 429/502/503/504 and transport errors → Retry,
    honouring Retry-After (capped at retry_cap). A 3xx is never followed: it is a server or
    `server.url` misconfiguration, not a verdict on the message, so → Retry ("redirect"). Other
    1xx/2xx carry no receipt → Retry. Other 4xx/5xx → Rejected, never retried. A status outside
    100-599 is no HTTP answer at all → Retry ("protocol").
    """
    if isinstance(response, TransportError):
        sent = response.kind not in NOT_SENT_KINDS  # anything later may have reached the server
        return Retry(None, f"{response.kind}: {response.message}", response.status, sent, response.config)
    status = response.status
    if not 100 <= status <= 599:  # not an HTTP status: says nothing about the message (a proxy, a broken server)
        return Retry(None, f"protocol: server answered status {status}, which HTTP does not define",
                     status if 0 <= status <= 999 else None)
    if status == 200:
        try:
            body, ts, digest = verify_receipt(sealed, response.body, vendor_keys)
        except ReceiptError as exc:
            return Retry(None, f"bad_receipt: {_clean(exc.message)}", status)
        return Delivered(body, ts, digest, status, float(ts) - now)
    if 300 <= status < 400:
        return Retry(None, f"redirect: server answered {status} (not followed)", status)
    if status in RETRY_STATUSES:
        after = parse_retry_after(response.headers.get("retry-after"), now, retry_cap)
        return Retry(after, f"http {status}", status)
    if status < 300:
        return Retry(None, f"no_receipt: server answered {status} without a receipt", status)
    detail = _server_detail(response.body)
    return Rejected(status, f"http {status}" + (f": {detail}" if detail else ""))


def verify_receipt(
    sealed: Sealed, data: bytes, vendor_keys: Iterable[bytes]
) -> tuple[dict[str, Any], int, str]:
    """Return (body, server ts, payload sha256) of a receipt for sealed; raises ReceiptError."""
    try:
        opened = open_envelope(data, vendor_keys, RECEIPT_TYPE)
    except EnvelopeError as exc:
        raise ReceiptError(exc.message) from None
    obj = opened.obj
    if type(obj.get("v")) is not int or obj["v"] != 1:
        raise ReceiptError("receipt v is not 1")
    if obj.get("aud") != sealed.obj["iid"]:
        raise ReceiptError("receipt aud is not this instance")
    if obj.get("req") != "sha256:" + sealed.payload_sha256:
        raise ReceiptError("receipt req does not match the request payload")
    if obj.get("nonce") != sealed.obj["nonce"]:
        raise ReceiptError("receipt nonce does not match the request")
    ts = obj.get("ts")
    if not isinstance(ts, int) or not _uint(ts):
        raise ReceiptError("receipt ts is not a non-negative integer")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise ReceiptError("receipt body is not an object")
    check_body(sealed.kind, body)
    return body, ts, hashlib.sha256(opened.payload).hexdigest()


def _uint(v: Any) -> bool:
    return type(v) is int and 0 <= v < _MAX_INT


def _positive(v: Any) -> bool:
    return _uint(v) and v > 0


def _opt(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _word(v: Any) -> bool:
    # credentials end up in auth.conf / helper output: no whitespace or control characters
    return isinstance(v, str) and 0 < len(v) <= 4096 and v.isprintable() and not any(
        c.isspace() for c in v
    )


def _license_id(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 64 and v.isprintable()


# kind → {field: (required, validator, what it should be)}
_BODIES: dict[str, dict[str, tuple[bool, Callable[[Any], bool], str]]] = {
    "license": {
        "state": (True, lambda v: v in RECEIPT_STATES, "one of " + "/".join(RECEIPT_STATES)),
        "license_id": (True, _opt(_license_id), "a license id or null"),
        "expires_at": (True, _opt(_uint), "a Unix time or null"),
        "grace_until": (True, _opt(_uint), "a Unix time or null"),
        "next_check_in": (True, _opt(_positive), "positive seconds or null"),
    },
    "heartbeat": {"next_in": (False, _positive, "positive seconds")},
    "digest": {"need_full": (True, lambda v: isinstance(v, bool), "true or false")},
    "credentials": {
        "username": (True, _word, "a non-empty string without spaces"),
        "secret": (True, _word, "a non-empty string without spaces"),
        "registry": (True, _word, "a non-empty string without spaces"),
        "expires_in": (True, lambda v: _positive(v) and v <= MAX_CREDENTIALS_TTL,
                       f"positive seconds, at most {MAX_CREDENTIALS_TTL} (24 h)"),
    },
}


def check_body(kind: str, body: Mapping[str, Any]) -> None:
    """Raise ReceiptError unless body has the receipt shape of kind; unknown extra keys are allowed.

    Messages name fields only, never values: a credentials body holds a secret.
    """
    spec = _BODIES.get(kind)
    if spec is None:
        raise ReceiptError(f"no receipt shape for message kind {kind!r}")
    for name, (required, valid, what) in spec.items():
        if name not in body:
            if required:
                raise ReceiptError(f"receipt body.{name} is missing")
            continue
        if not valid(body[name]):
            raise ReceiptError(f"receipt body.{name} is not {what}")


def _server_detail(body: bytes) -> str:
    """Return the server's short error text from a JSON error body, or ""."""
    try:
        obj = json.loads(body[:4096])
    except (ValueError, UnicodeDecodeError, RecursionError):
        return ""
    if not isinstance(obj, dict):
        return ""
    text = next((obj[k] for k in ("error", "message", "detail") if isinstance(obj.get(k), str)), "")
    return _clean(text, 120)


def _clean(text: str, limit: int = 200) -> str:
    # server-chosen text lands in logs and the ledger: one line, printable, bounded
    flat = "".join(c if c.isprintable() else " " for c in text)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
