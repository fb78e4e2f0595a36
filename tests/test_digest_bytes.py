"""The v1 full digest on the wire is fixed: same inventory and keys → the same payload and envelope bytes.

The hashes below were taken from the agent before digests were streamed (list-of-hex-strings
payload through `json.dumps`); any later way of producing a full digest must give these bytes.
"""

from __future__ import annotations

import hashlib

import nacl.signing

from fluxagent.identifiers import TokenSet, add_machine, add_networks, add_servers, key_id
from fluxagent.wire import messages

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
