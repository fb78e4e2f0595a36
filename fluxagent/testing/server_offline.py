"""The reference server's side of the air-gapped exchange: verify a bundle, sign the answer.

Each message of a bundle goes through the same `Verifier.handle` as an online request, so an
exported message is checked exactly like one posted over HTTPS (docs/PROTOCOL.md §8).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import nacl.signing

from fluxagent.errors import EnvelopeError
from fluxagent.kinds import KIND_BY_ENDPOINT
from fluxagent.offline import ANSWER_TYPE, BUNDLE_TYPE
from fluxagent.testing.server_protocol import Rejected, Verifier, _public_key, build_receipt, peek
from fluxagent.wire import envelope

OFFLINE_ENDPOINT = "/v1/offline-bundle"


class BundleRefused(Exception):
    """A bundle that is not verifiable as a whole; carries an HTTP-like status and a code."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def _bundle_key(verifier: Verifier, obj: dict[str, Any]) -> bytes:
    """Return the key that must have signed the bundle: the registered one, or the one its license carries."""
    iid = obj.get("iid")
    inst = verifier.instances.get(iid) if isinstance(iid, str) else None
    if inst is not None:
        return inst.public_key
    for m in obj.get("messages", []):
        if isinstance(m, dict) and KIND_BY_ENDPOINT.get(str(m.get("endpoint"))) == "license":
            payload = peek(str(m.get("envelope", "")).encode())
            if payload is not None and payload.get("iid") == iid:
                try:
                    return _public_key(payload)
                except Rejected:
                    break
    raise BundleRefused(403, "unknown_instance", "instance not registered and the bundle has no license message")


def answer_bundle(
    verifier: Verifier,
    bundle: bytes,
    signing_key: nacl.signing.SigningKey,
    now: int,
    license_file: bytes | None = None,
) -> bytes:
    """Return the signed answer to a bundle (a receipt or refusal per message); raises BundleRefused."""
    try:
        ptype, raw, _ = envelope.parse_envelope(bundle)
        obj = json.loads(raw)
    except (EnvelopeError, ValueError, UnicodeDecodeError):
        raise BundleRefused(400, "bad_bundle", "not a DSSE envelope with a JSON payload") from None
    if ptype != BUNDLE_TYPE or not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
        raise BundleRefused(400, "bad_bundle", f"payloadType must be {BUNDLE_TYPE} with a list of messages")
    try:
        envelope.open_envelope(bundle, [_bundle_key(verifier, obj)], BUNDLE_TYPE)
    except EnvelopeError as exc:
        raise BundleRefused(401, "bad_signature", exc.message) from None
    items: list[dict[str, Any]] = []
    for m in obj["messages"]:
        if not isinstance(m, dict) or not isinstance(m.get("envelope"), str):
            raise BundleRefused(400, "bad_bundle", "each message needs an endpoint and an envelope")
        data = m["envelope"].encode()
        try:
            req = "sha256:" + hashlib.sha256(envelope.parse_envelope(data)[1]).hexdigest()
        except EnvelopeError:
            continue  # nothing to name in an answer
        outcome = verifier.handle(str(m.get("endpoint")), data)
        if outcome.status == 200:
            receipt = build_receipt(outcome, signing_key, now).decode()
            items.append({"req": req, "status": 200, "receipt": receipt})
        else:
            items.append({"req": req, "status": outcome.status, "error": outcome.error, "detail": outcome.detail})
    answer = {"v": 1, "aud": obj.get("iid"), "ts": now, "receipts": items,
              "license_file": base64.b64encode(license_file).decode() if license_file else None}
    return envelope.sign_envelope(ANSWER_TYPE, envelope.canonical_json(answer), signing_key) + b"\n"
