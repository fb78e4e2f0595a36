"""classify: only a pinned-key receipt for this exact request counts as a delivery."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from typing import Any

import nacl.signing
import pytest

from fluxagent.facts import Counts
from fluxagent.wire import envelope, messages
from fluxagent.wire.envelope import RECEIPT_TYPE, canonical_json, sign_envelope
from fluxagent.wire.http import HttpResponse, TransportError
from fluxagent.wire.receipts import Delivered, Rejected, Retry, classify, redact

NOW = 1_700_000_000.0
CAP = 3600.0
VENDOR = nacl.signing.SigningKey.generate()
NEXT_VENDOR = nacl.signing.SigningKey.generate()
PINNED = (bytes(VENDOR.verify_key), bytes(NEXT_VENDOR.verify_key))
INSTANCE = nacl.signing.SigningKey.generate()
IID = str(uuid.uuid4())
SECRET = "tok_SeCrEt-4f9a"
BODIES: dict[str, dict[str, Any]] = {
    "heartbeat": {"next_in": 3600},
    "license": {
        "state": "valid", "license_id": "LIC-1", "expires_at": 1_800_000_000,
        "grace_until": None, "next_check_in": 21600,
    },
    "digest": {"need_full": False},
    "credentials": {
        "username": "inst-1", "secret": SECRET, "registry": "registry.fluxbilling.example",
        "expires_in": 900,
    },
}


def without(kind: str, name: str) -> dict[str, Any]:
    return {k: v for k, v in BODIES[kind].items() if k != name}


def sealed(kind: str = "heartbeat", seq: int = 1) -> messages.Sealed:
    msg = {
        "heartbeat": lambda: messages.build_heartbeat("4.2.0", "billing.example", Counts(1, 2, 3)),
        "license": lambda: messages.build_license(
            "billing.example", "LIC-1", "valid", bytes(INSTANCE.verify_key)
        ),
        "digest": lambda: messages.Message(
            "digest", {"key_id": "0" * 16, "root": "0" * 64, "full": False}
        ),
        "credentials": messages.build_credentials,
    }[kind]()
    return messages.seal(
        msg, signing_key=INSTANCE, iid=IID, aud="licensing.example", seq=seq, now=int(NOW),
        nonce=bytes([seq]) * 16,
    )


def receipt_payload(s: messages.Sealed, **overrides: Any) -> dict[str, Any]:
    payload = {
        "v": 1, "aud": s.obj["iid"], "req": "sha256:" + s.payload_sha256, "nonce": s.obj["nonce"],
        "ts": int(NOW) + 42, "body": BODIES[s.kind],
    }
    payload.update(overrides)
    return payload


def receipt(s: messages.Sealed, key: nacl.signing.SigningKey = VENDOR, ptype: str = RECEIPT_TYPE,
            **overrides: Any) -> bytes:
    return sign_envelope(ptype, canonical_json(receipt_payload(s, **overrides)), key)


def ok(body: bytes) -> HttpResponse:
    return HttpResponse(200, {"content-type": "application/json"}, body)


def outcome(s: messages.Sealed, response: HttpResponse | TransportError,
            keys: tuple[bytes, ...] = PINNED) -> Any:
    return classify(s, response, keys, NOW, CAP)


def assert_bad_receipt(result: Any, why: str = "") -> None:
    assert isinstance(result, Retry), result
    assert result.reason.startswith("bad_receipt: ") and why in result.reason
    assert (result.after, result.status) == (None, 200)
    assert SECRET not in result.reason


# ---- good receipts ----


@pytest.mark.parametrize("kind", list(BODIES))
def test_good_receipt_is_delivered_with_server_time_skew_and_payload_hash(kind: str) -> None:
    s = sealed(kind)
    data = receipt(s)
    result = outcome(s, ok(data))
    assert isinstance(result, Delivered)
    assert result.receipt_body == BODIES[kind]
    assert (result.server_ts, result.status, result.skew) == (int(NOW) + 42, 200, 42.0)
    signed = base64.b64decode(json.loads(data)["payload"])
    assert result.receipt_sha256 == hashlib.sha256(signed).hexdigest()


def test_receipt_signed_by_the_second_pinned_key_is_delivered() -> None:
    s = sealed()
    assert isinstance(outcome(s, ok(receipt(s, key=NEXT_VENDOR))), Delivered)


def test_unknown_extra_receipt_body_fields_are_tolerated() -> None:
    s = sealed("digest")
    data = receipt(s, body={"need_full": True, "later_field": "x"})
    result = outcome(s, ok(data))
    assert isinstance(result, Delivered) and result.receipt_body["need_full"] is True


def test_heartbeat_receipt_without_next_in_is_delivered() -> None:
    s = sealed()
    assert isinstance(outcome(s, ok(receipt(s, body={}))), Delivered)


def test_delivered_repr_never_shows_the_credential_secret() -> None:
    s = sealed("credentials")
    result = outcome(s, ok(receipt(s)))
    assert isinstance(result, Delivered) and result.receipt_body["secret"] == SECRET
    assert SECRET not in repr(result) and SECRET not in str(result)
    assert redact(result.receipt_body)["secret"] == "<redacted>"


# ---- receipts that prove nothing ----


def test_receipt_signed_by_an_unpinned_key_is_a_bad_receipt() -> None:
    s = sealed()
    assert_bad_receipt(outcome(s, ok(receipt(s, key=nacl.signing.SigningKey.generate()))))


def test_receipt_claiming_a_pinned_keyid_but_signed_by_another_key_is_a_bad_receipt() -> None:
    s = sealed()
    env = json.loads(receipt(s, key=nacl.signing.SigningKey.generate()))
    env["signatures"][0]["keyid"] = envelope.keyid(PINNED[0])
    assert_bad_receipt(outcome(s, ok(json.dumps(env).encode())), "no trusted key")


def test_receipt_with_no_pinned_keys_configured_is_a_bad_receipt() -> None:
    s = sealed()
    assert_bad_receipt(outcome(s, ok(receipt(s)), keys=()))


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"req": "sha256:" + "0" * 64}, "req"),
        ({"nonce": "A" * 22}, "nonce"),
        ({"aud": str(uuid.uuid4())}, "aud"),
        ({"v": 2}, "v"),
        ({"v": True}, "v"),
        ({"ts": "1700000042"}, "ts"),
        ({"ts": -1}, "ts"),
        ({"body": []}, "body"),
        ({"body": {"next_in": 0}}, "body.next_in"),
        ({"body": {"next_in": "60"}}, "body.next_in"),
    ],
)
def test_receipt_not_matching_this_request_is_a_bad_receipt(
    overrides: dict[str, Any], why: str
) -> None:
    s = sealed()
    assert_bad_receipt(outcome(s, ok(receipt(s, **overrides))), why)


def test_receipt_for_another_message_is_a_bad_receipt() -> None:
    first, second = sealed(seq=1), sealed(seq=2)
    assert_bad_receipt(outcome(second, ok(receipt(first))))


def test_receipt_missing_payload_fields_is_a_bad_receipt() -> None:
    s = sealed()
    payload = receipt_payload(s)
    del payload["nonce"]
    assert_bad_receipt(outcome(s, ok(sign_envelope(RECEIPT_TYPE, canonical_json(payload), VENDOR))))


def test_envelope_of_another_type_is_a_bad_receipt() -> None:
    s = sealed()
    data = receipt(s, ptype=envelope.payload_type("heartbeat"))
    assert_bad_receipt(outcome(s, ok(data)), "type")


def test_request_envelope_echoed_back_is_a_bad_receipt() -> None:
    s = sealed()
    assert_bad_receipt(outcome(s, ok(s.envelope)))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html>ok</html>",
        b'{"payloadType": "application/vnd.fluxagent.receipt.v1+json", "payload": "e30=", "signatu',
        b"[]",
        b'{"payloadType": 1, "payload": "e30=", "signatures": []}',
        b'{"payloadType": "application/vnd.fluxagent.receipt.v1+json", "payload": "!!",'
        b' "signatures": []}',
    ],
)
def test_truncated_or_malformed_receipt_is_a_bad_receipt(body: bytes) -> None:
    assert_bad_receipt(outcome(sealed(), ok(body)))


def test_truncated_receipt_envelope_is_a_bad_receipt() -> None:
    s = sealed()
    data = receipt(s)
    assert_bad_receipt(outcome(s, ok(data[: len(data) // 2])))


def test_unsigned_receipt_is_a_bad_receipt() -> None:
    s = sealed()
    env = json.loads(receipt(s))
    env["signatures"] = []
    assert_bad_receipt(outcome(s, ok(json.dumps(env).encode())), "no signature")


def test_signed_payload_that_is_not_an_object_is_a_bad_receipt() -> None:
    s = sealed()
    assert_bad_receipt(outcome(s, ok(sign_envelope(RECEIPT_TYPE, b"[1]", VENDOR))))


@pytest.mark.parametrize(
    ("kind", "body", "why"),
    [
        ("license", {**BODIES["license"], "state": "offline"}, "body.state"),
        ("license", {**BODIES["license"], "expires_at": "2030"}, "body.expires_at"),
        ("license", without("license", "grace_until"), "grace_until"),
        ("license", {**BODIES["license"], "license_id": 7}, "body.license_id"),
        ("digest", {}, "body.need_full"),
        ("digest", {"need_full": 1}, "body.need_full"),
        ("credentials", {**BODIES["credentials"], "expires_in": 0}, "body.expires_in"),
        ("credentials", {**BODIES["credentials"], "secret": ""}, "body.secret"),
        ("credentials", {**BODIES["credentials"], "secret": SECRET + "\nx"}, "body.secret"),
        ("credentials", {**BODIES["credentials"], "registry": "a b"}, "body.registry"),
        ("credentials", without("credentials", "username"), "username"),
    ],
)
def test_receipt_body_of_the_wrong_shape_is_a_bad_receipt(kind: str, body: Any, why: str) -> None:
    s = sealed(kind)
    assert_bad_receipt(outcome(s, ok(receipt(s, body=body))), why)


# ---- HTTP status and transport outcomes ----


@pytest.mark.parametrize(
    ("status", "retry_after", "after"),
    [
        (429, None, None),
        (503, None, None),
        (429, "30", 30.0),
        (503, "Tue, 14 Nov 2023 22:14:20 GMT", 60.0),  # NOW + 60 s
        (503, "31536000", CAP),
        (502, "-10", None),
        (504, "later", None),
    ],
)
def test_busy_statuses_are_retried_honouring_retry_after(
    status: int, retry_after: str | None, after: float | None
) -> None:
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    result = outcome(sealed(), HttpResponse(status, headers, b"busy"))
    assert result == Retry(after, f"http {status}", status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 422, 500, 501])
def test_other_error_statuses_are_rejected(status: int) -> None:
    result = outcome(sealed(), HttpResponse(status, {}, b"nope"))
    assert result == Rejected(status, f"http {status}")


def test_rejection_reason_carries_the_servers_error_text_on_one_line() -> None:
    body = json.dumps({"error": "license revoked\nINJECTED line" + "x" * 500}).encode()
    result = outcome(sealed(), HttpResponse(403, {}, body))
    assert isinstance(result, Rejected)
    assert result.reason.startswith("http 403: license revoked INJECTED line")
    assert "\n" not in result.reason and len(result.reason) < 140


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirect_status_is_retried_not_followed(status: int) -> None:
    result = outcome(sealed(), HttpResponse(status, {"location": "https://elsewhere/"}, b""))
    assert isinstance(result, Retry) and result.reason.startswith("redirect")
    assert result.status == status


@pytest.mark.parametrize("status", [201, 202, 204])
def test_success_without_a_receipt_is_retried(status: int) -> None:
    result = outcome(sealed(), HttpResponse(status, {}, b""))
    assert isinstance(result, Retry) and result.reason.startswith("no_receipt")


@pytest.mark.parametrize(
    "kind", ["connect", "dns", "tls", "broken", "timeout", "deadline", "too_large", "protocol"]
)
def test_transport_errors_are_retried(kind: Any) -> None:
    err = TransportError(kind, "https://licensing.example/v1/heartbeat", "went wrong")
    result = outcome(sealed(), err)
    assert isinstance(result, Retry) and result.reason.startswith(f"{kind}: ")
    assert (result.after, result.status) == (None, None)
    assert result.sent is (kind not in ("connect", "dns", "tls"))  # did the request leave the machine?


def test_redirect_transport_error_is_retried_with_its_status() -> None:
    err = TransportError("redirect", "https://licensing.example/v1/license", "moved", status=301)
    result = outcome(sealed("license"), err)
    assert isinstance(result, Retry) and result.reason.startswith("redirect: ")
    assert result.status == 301
