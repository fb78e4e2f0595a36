"""DSSE envelopes (PAE + Ed25519) and the canonical JSON encoding of payloads (docs/PROTOCOL.md §2)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import nacl.exceptions
import nacl.signing

from fluxagent.errors import EnvelopeError

TYPE_PREFIX = "application/vnd.fluxagent."
RECEIPT_TYPE = "application/vnd.fluxagent.receipt.v1+json"
# The vendor's license file has its own type (docs/PROTOCOL.md §5), never the instance's license message's.
LICENSE_FILE_TYPE = "application/vnd.fluxagent.license-file.v1+json"
# What license files carried before they got their own type: the license message's type. Accepted for
# a license file only if issued before LEGACY_LICENSE_FILES_UNTIL (a transition; PROTOCOL §5).
LICENSE_TYPE = "application/vnd.fluxagent.license.v1+json"
LEGACY_LICENSE_FILES_UNTIL = 1_814_400_000  # 2027-07-01T00:00:00Z
# DSSE allows several signatures; a vendor rotating keys needs two. Each one is tried against every
# pinned key, so an unbounded list from a hostile server would be an unbounded Ed25519 bill.
MAX_SIGNATURES = 8


def payload_type(kind: str) -> str:
    """Return the DSSE payloadType of a message kind."""
    return f"{TYPE_PREFIX}{kind}.v1+json"


def canonical_json(obj: object) -> bytes:
    """Return compact UTF-8 JSON with sorted keys; refuses floats and non-string keys."""
    _refuse_floats(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _refuse_floats(obj: object) -> None:
    if isinstance(obj, float):
        raise EnvelopeError("payloads carry integers only; a float reached the encoder")
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise EnvelopeError(f"payload key {k!r} is not a string")
            _refuse_floats(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            _refuse_floats(v)


def pae(ptype: str, payload: bytes) -> bytes:
    """Return the DSSE v1 pre-authentication encoding of (type, payload)."""
    t = ptype.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def keyid(public_key: bytes) -> str:
    """Return the DSSE keyid of a raw Ed25519 public key: hex SHA-256, first 32 digits."""
    return hashlib.sha256(public_key).hexdigest()[:32]


def sign_envelope(ptype: str, payload: bytes, signing_key: nacl.signing.SigningKey) -> bytes:
    """Return the JSON envelope text (bytes) carrying payload signed under PAE."""
    sig = signing_key.sign(pae(ptype, payload)).signature
    env = {
        "payloadType": ptype,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [
            {"keyid": keyid(bytes(signing_key.verify_key)), "sig": base64.b64encode(sig).decode("ascii")}
        ],
    }
    return json.dumps(env, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class Opened:
    """A verified envelope: its type, exact payload bytes, decoded payload and the key that verified it."""

    payload_type: str
    payload: bytes
    obj: dict[str, Any]
    key: bytes


_CANONICAL_HEAD = b'{"payload":"'


def parse_envelope(data: bytes) -> tuple[str, bytes, list[tuple[str, bytes]]]:
    """Return (type, payload bytes, [(keyid, sig)]) of an envelope; raises EnvelopeError on bad shape.

    An envelope in the canonical form `sign_envelope` writes starts `{"payload":"`: its payload is
    then taken as bytes straight from the text (base64 holds no quote or backslash) and only the
    rest goes through the JSON parser, which spares a tens-of-MB digest one whole pass and copy.
    """
    payload_b64: Any = None
    head = len(_CANONICAL_HEAD)
    end = data.find(b'"', head) if data[:head] == _CANONICAL_HEAD else -1
    # a backslash anywhere (an escape to decode, maybe spelling "payload") or a second "payload" key
    # (JSON keeps the last) takes the long way
    if end > 0 and data.find(b"\\", head) < 0 and data.find(b'"payload"', end) < 0:
        payload_b64, data = memoryview(data)[head:end], _CANONICAL_HEAD + data[end:]
    try:
        env = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # deep nesting: RecursionError
        raise EnvelopeError(f"envelope is not JSON: {str(exc)[:120]}") from None
    if not isinstance(env, dict):
        raise EnvelopeError("envelope is not a JSON object")
    ptype, sigs = env.get("payloadType"), env.get("signatures")
    if payload_b64 is None:
        payload_b64 = env.get("payload")
        if not isinstance(payload_b64, str):
            raise EnvelopeError("envelope lacks payloadType, payload or signatures")
        try:
            payload_b64 = payload_b64.encode("ascii")
        except UnicodeEncodeError:
            raise EnvelopeError("envelope payload is not valid base64") from None
    if not isinstance(ptype, str) or not isinstance(sigs, list):
        raise EnvelopeError("envelope lacks payloadType, payload or signatures")
    if len(sigs) > MAX_SIGNATURES:
        raise EnvelopeError(f"envelope carries more than {MAX_SIGNATURES} signatures ({len(sigs)})")
    try:
        payload = binascii.a2b_base64(payload_b64, strict_mode=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError("envelope payload is not valid base64") from None
    out: list[tuple[str, bytes]] = []
    for s in sigs:
        if not isinstance(s, dict) or not isinstance(s.get("sig"), str):
            raise EnvelopeError("envelope signature entry is malformed")
        try:
            sig = base64.b64decode(s["sig"], validate=True)
        except (binascii.Error, ValueError):
            raise EnvelopeError("envelope signature is not valid base64") from None
        kid = s.get("keyid", "")
        out.append((kid if isinstance(kid, str) else "", sig))
    if not out:
        raise EnvelopeError("envelope carries no signature")
    return ptype, payload, out


def open_envelope(data: bytes, trusted_keys: Iterable[bytes], expected_type: str) -> Opened:
    """Verify an envelope against trusted raw Ed25519 keys and its type; raises EnvelopeError.

    keyid only orders the candidates: every trusted key is tried against every signature.
    """
    ptype, payload, sigs = parse_envelope(data)
    if ptype != expected_type:
        raise EnvelopeError(f"envelope type is {ptype!r}, expected {expected_type!r}")
    key = verify_parsed(ptype, payload, sigs, trusted_keys)
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise EnvelopeError("signed payload is not JSON") from None
    if not isinstance(obj, dict):
        raise EnvelopeError("signed payload is not a JSON object")
    return Opened(ptype, payload, obj, key)


def verify_parsed(ptype: str, payload: bytes, sigs: list[tuple[str, bytes]], trusted_keys: Iterable[bytes]) -> bytes:
    """Return the trusted key that verifies one of sigs over PAE(ptype, payload); raises EnvelopeError.

    For a caller that parsed the envelope already (`parse_envelope`): a large one is parsed once.
    """
    keys = list(trusted_keys)
    if not keys:
        raise EnvelopeError("no trusted keys to verify the envelope with")
    message = pae(ptype, payload)
    for kid, sig in sigs:
        ordered = sorted(keys, key=lambda k: keyid(k) != kid)
        for key in ordered:
            try:
                nacl.signing.VerifyKey(key).verify(message, sig)
            except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError):
                continue
            return key
    raise EnvelopeError("no trusted key verifies the envelope signature")
