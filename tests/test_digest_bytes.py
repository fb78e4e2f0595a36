"""The v1 full digest on the wire is fixed: same inventory and keys → the same payload and envelope bytes.

The hashes below were taken from the agent before digests were streamed (list-of-hex-strings
payload through `json.dumps`); any later way of producing a full digest must give these bytes.
"""

from __future__ import annotations

import hashlib
import itertools

import nacl.signing
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxagent.identifiers import TokenSet, add_machine, add_networks, add_servers, key_id
from fluxagent.wire import envelope, messages
from fluxagent.wire.stream import sign_stream

SIGNING = nacl.signing.SigningKey(b"\x21" * 32)
DIGEST_KEY = bytes(range(32))
IID = "0b7a9c1e-4d2f-4a6b-8c3d-9e0f1a2b3c4d"
NONCE = bytes(range(16))
SEAL = {"iid": IID, "aud": "licensing.example.test", "seq": 4242, "now": 1_795_338_050}

PAYLOAD_SHA256 = "41a822008f1adc4d17c8539216d34b3f009dc569195beedeb6ac713ba05947e5"
ENVELOPE_SHA256 = "4015252a1e4369b6f9793fc5dc900311277cbecfff8d025d789bc2e1d14952d3"
EMPTY_PAYLOAD_SHA256 = "70cc1c3ce18477a4a5bf83a3ab6b70f12982d0a8cb8c91a37e11620334cf0412"
EMPTY_ENVELOPE_SHA256 = "7e9a8c0e90b075d38715b621724b4945c1f6a980ac897582bae1c16fb73c555b"


def inventory(n: int = 3000) -> TokenSet:
    """Return the finished tokens of a fixed inventory: hostnames, IPv4/IPv6 servers, /24 and /64 ranges."""
    ts = TokenSet()
    servers = [(f"node{i}.rack{i % 7}.example.net", None) if i % 3 else (None, f"10.{i >> 8 & 255}.{i & 255}.7")
               for i in range(n)]
    servers += [(None, f"2001:db8::{i:x}") for i in range(n // 10)]
    servers += [("bad name!", "192.0.2.1"), ("", "")]
    add_servers(ts, servers, DIGEST_KEY)
    add_machine(ts, "0123456789abcdef0123456789abcdef", [], DIGEST_KEY)
    nets = [f"{64 + (i >> 8)}.{i & 255}.0.0/24" if i % 2 else f"2001:db8:{i:x}::/64" for i in range(n)]
    add_networks(ts, [*nets, "not a net", "10.0.0.1/8"], DIGEST_KEY)
    return ts.finish()


def full_digest(tokens: TokenSet) -> messages.Sealed:
    """Return today's sealed full digest of tokens under the fixed keys."""
    msg = messages.build_digest(tokens, key_id(DIGEST_KEY), None)
    return messages.seal(msg, signing_key=SIGNING, nonce=NONCE, **SEAL)


def test_full_digest_payload_and_envelope_bytes_are_those_of_protocol_v1() -> None:
    sealed = full_digest(inventory())
    assert hashlib.sha256(sealed.payload).hexdigest() == PAYLOAD_SHA256
    assert hashlib.sha256(sealed.envelope).hexdigest() == ENVELOPE_SHA256


def test_full_digest_of_an_empty_inventory_keeps_its_v1_bytes() -> None:
    sealed = full_digest(TokenSet().finish())
    assert hashlib.sha256(sealed.payload).hexdigest() == EMPTY_PAYLOAD_SHA256
    assert hashlib.sha256(sealed.envelope).hexdigest() == EMPTY_ENVELOPE_SHA256


def test_a_digest_too_large_to_hold_whole_streams_exactly_the_bytes_of_the_list_based_encoder() -> None:
    tokens = inventory(12_000)
    sealed = full_digest(tokens)
    assert sealed.streamed is not None and sealed.envelope == b""  # kept as a stream, never whole
    body = {"full": True, "key_id": key_id(DIGEST_KEY), "root": tokens.root,
            "servers": tokens.servers.hex(), "networks": tokens.networks.hex()}
    obj = {"v": 1, "aud": SEAL["aud"], "iid": IID, "seq": SEAL["seq"], "ts": SEAL["now"],
           "nonce": "AAECAwQFBgcICQoLDA0ODw", "body": body}
    payload = envelope.canonical_json(obj)
    expected = envelope.sign_envelope(envelope.payload_type("digest"), payload, SIGNING)
    assert sealed.payload_size == len(payload) and sealed.payload_sha256 == hashlib.sha256(payload).hexdigest()
    assert sealed.envelope_size == len(expected)
    assert b"".join(sealed.envelope_chunks()) == expected
    assert sealed.summary == {"full": True, "key_id": key_id(DIGEST_KEY), "root": tokens.root,
                              "servers": len(tokens.servers), "networks": len(tokens.networks),
                              "payload_bytes": len(payload)}


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(max_size=64), st.lists(st.binary(max_size=300), max_size=8))
def test_the_signature_over_a_stream_is_the_ed25519_signature_of_the_whole_message(
    seed: bytes, header: bytes, chunks: list[bytes]
) -> None:
    whole = nacl.signing.SigningKey(seed).sign(header + b"".join(chunks)).signature
    assert sign_stream(seed, header, lambda: iter(chunks)) == whole


@settings(max_examples=200)
@given(text=st.text(max_size=60), cuts=st.lists(st.integers(0, 240), max_size=6))
def test_a_text_value_renders_as_canonical_json_writes_that_string_however_its_bytes_are_cut(
    text: str, cuts: list[int]
) -> None:
    from fluxagent.wire.stream import Text, seal_streamed

    data = text.encode()
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]  # may split a character
    value = Text.of(lambda: iter(pieces))
    whole = envelope.canonical_json({"s": text, "t": [text, 1]})
    alone = envelope.canonical_json(text)
    assert b"".join(value.rendered()) == alone and value.size == len(alone)
    st_ = seal_streamed("application/x-test", {"s": value, "t": [value, 1]}, SIGNING)
    assert b"".join(st_.payload_chunks()) == whole
    assert b"".join(st_.envelope_chunks()) == envelope.sign_envelope("application/x-test", whole, SIGNING)
