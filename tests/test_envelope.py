"""DSSE envelopes: PAE + Ed25519 over the exact payload bytes; any change is rejected."""

from __future__ import annotations

import base64
import hashlib
import json

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxagent.errors import EnvelopeError
from fluxagent.wire import envelope

KEY = nacl.signing.SigningKey(b"\x11" * 32)
OTHER = nacl.signing.SigningKey(b"\x22" * 32)
PUB = bytes(KEY.verify_key)
PTYPE = envelope.payload_type("heartbeat")
PAYLOAD = envelope.canonical_json({"v": 1, "seq": 7, "body": {"hostname": "billing-01.example.com"}})
ENV = envelope.sign_envelope(PTYPE, PAYLOAD, KEY)


def _parts(env: bytes) -> tuple[bytes, bytes, bytes]:
    doc = json.loads(env)
    return (doc["payloadType"].encode(), base64.b64decode(doc["payload"]),
            base64.b64decode(doc["signatures"][0]["sig"]))


def _rebuild(ptype: bytes, payload: bytes, sig: bytes, keyid: str | None = None) -> bytes:
    return json.dumps({
        "payloadType": ptype.decode("utf-8", errors="surrogateescape"),
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": keyid or envelope.keyid(PUB), "sig": base64.b64encode(sig).decode()}],
    }, ensure_ascii=True).encode("utf-8", errors="surrogateescape")


def test_pae_is_the_dsse_v1_encoding():
    assert envelope.pae("text/plain", b"hello") == b"DSSEv1 10 text/plain 5 hello"
    assert envelope.pae("", b"") == b"DSSEv1 0  0 "
    # the length is of the UTF-8 bytes, not of the characters
    assert envelope.pae("t/ü", b"\xff") == b"DSSEv1 4 t/\xc3\xbc 1 \xff"


def test_seal_then_open_returns_the_exact_payload_bytes_and_object():
    opened = envelope.open_envelope(ENV, [PUB], PTYPE)
    assert opened.payload == PAYLOAD
    assert opened.obj == json.loads(PAYLOAD)
    assert opened.key == PUB
    assert opened.payload_type == PTYPE


def test_envelope_shape_matches_the_wire_protocol():
    doc = json.loads(ENV)
    assert set(doc) == {"payloadType", "payload", "signatures"}
    assert doc["payloadType"] == "application/vnd.fluxagent.heartbeat.v1+json"
    [sig] = doc["signatures"]
    assert sig["keyid"] == hashlib.sha256(PUB).hexdigest()[:32]
    KEY.verify_key.verify(envelope.pae(PTYPE, PAYLOAD), base64.b64decode(sig["sig"]))


def test_signature_covers_exact_bytes_so_non_canonical_payloads_still_verify():
    odd = b'{ "seq" : 7,\n  "v": 1 }'
    opened = envelope.open_envelope(envelope.sign_envelope(PTYPE, odd, KEY), [PUB], PTYPE)
    assert opened.payload == odd


def test_canonical_json_is_compact_sorted_utf8():
    assert envelope.canonical_json({"b": 1, "a": {"d": [1, 2], "c": "ü"}}) == '{"a":{"c":"ü","d":[1,2]},"b":1}'.encode()


@pytest.mark.parametrize("bad", [{"x": 1.0}, {"x": [0.5]}, {1: 2}, {"x": float("nan")}])
def test_canonical_json_refuses_floats_and_non_string_keys(bad):
    with pytest.raises(EnvelopeError):
        envelope.canonical_json(bad)


def test_wrong_key_is_rejected():
    with pytest.raises(EnvelopeError, match="no trusted key"):
        envelope.open_envelope(ENV, [bytes(OTHER.verify_key)], PTYPE)


def test_any_trusted_key_is_tried_whatever_the_keyid_says():
    ptype, payload, sig = _parts(ENV)
    lying = _rebuild(ptype, payload, sig, keyid=envelope.keyid(bytes(OTHER.verify_key)))
    assert envelope.open_envelope(lying, [bytes(OTHER.verify_key), PUB], PTYPE).key == PUB


def test_no_trusted_keys_means_nothing_verifies():
    with pytest.raises(EnvelopeError):
        envelope.open_envelope(ENV, [], PTYPE)


def test_wrong_expected_type_is_rejected_even_with_a_good_signature():
    with pytest.raises(EnvelopeError, match="type"):
        envelope.open_envelope(ENV, [PUB], envelope.payload_type("digest"))


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"[]", b'{"payloadType": "x"}', b'{"payloadType":"x","payload":"!!","signatures":[]}',
     b'{"payloadType":"x","payload":"","signatures":[]}', b'{"payloadType":"x","payload":"","signatures":[5]}',
     b'{"payloadType":"x","payload":"","signatures":[{"sig":"***"}]}', b"\xff\xfe"],
)
def test_malformed_envelopes_raise_envelope_error(data):
    with pytest.raises(EnvelopeError):
        envelope.open_envelope(data, [PUB], "x")


def test_signed_payload_that_is_not_a_json_object_is_rejected():
    with pytest.raises(EnvelopeError, match="not a JSON object"):
        envelope.open_envelope(envelope.sign_envelope(PTYPE, b"[1]", KEY), [PUB], PTYPE)


@settings(max_examples=300, deadline=None)
@given(part=st.sampled_from(["type", "payload", "sig"]), data=st.data())
def test_any_flipped_bit_in_type_payload_or_signature_is_rejected(part, data):
    ptype, payload, sig = _parts(ENV)
    target = {"type": ptype, "payload": payload, "sig": sig}[part]
    bit = data.draw(st.integers(0, len(target) * 8 - 1))
    flipped = bytearray(target)
    flipped[bit // 8] ^= 1 << (bit % 8)
    parts = {"type": ptype, "payload": payload, "sig": sig, part: bytes(flipped)}
    tampered = _rebuild(parts["type"], parts["payload"], parts["sig"])
    with pytest.raises(EnvelopeError):
        envelope.open_envelope(tampered, [PUB], PTYPE)


@settings(max_examples=300, deadline=None)
@given(bit=st.integers(0, len(ENV) * 8 - 1))
def test_a_flipped_bit_anywhere_in_the_envelope_text_never_yields_a_different_payload(bit):
    tampered = bytearray(ENV)
    tampered[bit // 8] ^= 1 << (bit % 8)
    try:
        opened = envelope.open_envelope(bytes(tampered), [PUB], PTYPE)
    except EnvelopeError:
        return
    # only changes the signature does not cover (keyid, base64 padding bits) may pass
    assert opened.payload == PAYLOAD and opened.payload_type == PTYPE


@settings(max_examples=100, deadline=None)
@given(payload=st.binary(max_size=300), ptype=st.text(max_size=40))
def test_round_trip_of_arbitrary_payload_bytes_and_types(payload, ptype):
    env = envelope.sign_envelope(ptype, payload, KEY)
    decoded_type, decoded_payload, sigs = envelope.parse_envelope(env)
    assert (decoded_type, decoded_payload) == (ptype, payload)
    assert len(sigs) == 1


def _slow_parse(data: bytes) -> tuple[str, bytes, list[tuple[str, bytes]]] | str:
    """What parse_envelope answers for data when its canonical-form shortcut cannot apply."""
    try:
        return envelope.parse_envelope(b" " + data)  # leading space: the whole text goes through JSON
    except EnvelopeError:
        return "error"


B64 = base64.b64encode(PAYLOAD).decode()
SIG = json.loads(ENV)["signatures"]


def _env(payload_text: str, between: str = "") -> bytes:
    """An envelope text whose payload string is payload_text (written raw), with `between` after it."""
    return ('{"payload":"' + payload_text + '"' + between + ',"payloadType":"' + PTYPE + '","signatures":'
            + json.dumps(SIG) + "}").encode()


@pytest.mark.parametrize("data", [
    ENV,
    _env(B64),
    # a second "payload" key wins in JSON, so it wins here too; a key may spell it with escapes
    _env(B64, ',"payload":""'),
    _env(B64, ',"payload":"' + B64[:-4] + '"'),
    _env(B64, ',"payl\\u006fad":""'),
    # escapes inside the payload string: JSON decodes them, the shortcut must not skip them
    _env("\\u0041" + B64[1:]),
    _env(B64[:8] + "\\/" + B64[8:]),
    # what a JSON string may not hold raw, and what base64 may not hold
    _env(B64[:4] + "\n" + B64[4:]),
    _env(B64[:-2]),
    _env(B64 + "\xe9"),
    b'{"payload":"' + B64.encode(),
    b'{"payload":"' + B64.encode() + b'"',
    b'{"payload":"' + B64.encode() + b'",}',
    b'{"payload":""}',
    b'{"payload":"","payloadType":"x","signatures":[]}',
])
def test_the_canonical_envelope_shortcut_answers_exactly_what_the_full_json_parse_answers(data: bytes) -> None:
    try:
        fast: object = envelope.parse_envelope(data)
    except EnvelopeError:
        fast = "error"
    assert fast == _slow_parse(data)


@settings(max_examples=300)
@given(at=st.integers(0, len(ENV)), cut=st.integers(0, 3),
       insert=st.sampled_from(['"', ',"payload":""', "\\", "\n", "A", "=", "}", "\u00e9", ""]))
def test_any_edit_of_an_envelope_text_is_answered_alike_by_the_shortcut_and_the_full_parse(
    at: int, cut: int, insert: str
) -> None:
    data = ENV[:at] + insert.encode() + ENV[at + cut:]
    try:
        fast: object = envelope.parse_envelope(data)
    except EnvelopeError:
        fast = "error"
    assert fast == _slow_parse(data)
