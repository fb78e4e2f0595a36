"""Sealing a payload that carries token lists without ever holding it whole (docs/ARCHITECTURE.md).

A digest of a million identifiers is ~35 MB of payload and ~47 MB of envelope. Instead of a hex
string per token and several whole copies, the payload stays a recipe: literal pieces of its
canonical JSON and the packed 16-byte token lists between them. It is rendered chunk by chunk
whenever its bytes are needed: twice to sign it (Ed25519 hashes the message twice), once into the
spool file or onto the screen (base64 in slices of whole 3-byte groups). The bytes are exactly
those `canonical_json` + `sign_envelope` give (tests hold them fixed).

A `Text` value is a JSON string read in chunks each time it is rendered: an offline bundle carries
the exact request envelopes that way, read from their spool files, never held whole.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import nacl.bindings
import nacl.signing

from fluxagent.identifiers import TOKEN_BYTES, TokenList
from fluxagent.wire.envelope import canonical_json, keyid

_MARK = re.compile(rb'"\\u0000tokens(\d+)\\u0000"')


def list_json_size(n: int) -> int:
    """Return the size of the JSON array of n 32-hex tokens: `["t1","t2",…]`."""
    return 35 * n + 1 if n else 2


def list_json_chunks(tokens: TokenList) -> Iterator[bytes]:
    """Yield the JSON array of tokens (sorted hex strings) in pieces, one per bucket."""
    yield b"["
    first = True
    for bucket in tokens.buckets:
        if not bucket:
            continue
        # hexlify puts "," every 16 bytes; widening each to '","' quotes the tokens in one C pass
        body = binascii.hexlify(bucket, b",", TOKEN_BYTES).replace(b",", b'","')
        yield (b'"' if first else b'","') + body
        first = False
    yield b"]" if first else b'"]'


@dataclass(frozen=True)
class Text:
    """A string value produced in UTF-8 chunks (`chunks()` gives them again each time), rendered
    as the JSON string canonical_json would write for it; `size` is that rendering's length."""

    chunks: Callable[[], Iterable[bytes]]
    size: int

    @classmethod
    def of(cls, chunks: Callable[[], Iterable[bytes]]) -> Text:
        """Return the Text of chunks, measured with one pass over them."""
        return cls(chunks, sum(len(c) for c in cls._rendered(chunks)))

    @staticmethod
    def _rendered(chunks: Callable[[], Iterable[bytes]]) -> Iterator[bytes]:
        # JSON escapes character by character, so escaping each decoded chunk gives the escaped whole;
        # the incremental decoder carries a character split between two chunks over to the next
        decode = codecs.getincrementaldecoder("utf-8")().decode
        yield b'"'
        for chunk in chunks():
            text = decode(chunk)
            if text:
                yield json.dumps(text, ensure_ascii=False)[1:-1].encode()
        decode(b"", final=True)  # a truncated character raises here, as it would decoding the whole
        yield b'"'

    def rendered(self) -> Iterator[bytes]:
        """Yield the JSON string (quotes included) in pieces."""
        return self._rendered(self.chunks)


Piece = bytes | TokenList | Text


def _pieces(obj: dict[str, Any]) -> list[Piece]:
    """Return canonical_json(obj) as literal byte pieces and the TokenLists and Texts between them."""
    lists: list[TokenList | Text] = []

    def swap(v: Any) -> Any:
        if isinstance(v, TokenList | Text):
            lists.append(v)
            return f"\x00tokens{len(lists) - 1}\x00"
        if isinstance(v, dict):
            return {k: swap(x) for k, x in v.items()}
        if isinstance(v, list):
            return [swap(x) for x in v]
        return v

    text = canonical_json(swap(obj))
    out: list[Piece] = []
    pos = 0
    for m in _MARK.finditer(text):
        out += [text[pos:m.start()], lists[int(m[1])]]
        pos = m.end()
    out.append(text[pos:])
    return out


def _size(piece: Piece) -> int:
    if isinstance(piece, TokenList):
        return list_json_size(len(piece))
    return piece.size if isinstance(piece, Text) else len(piece)


@dataclass(frozen=True)
class Streamed:
    """A signed payload kept as its recipe (literal pieces and packed token lists), never whole.

    `payload_chunks()` renders the exact payload bytes again each time they are needed (signing,
    the spool file, the screen): rendering a million tokens takes a few tens of ms, holding them
    as text 35 MB.
    """

    ptype: str
    pieces: tuple[Piece, ...]
    size: int
    sha256: str
    signature: bytes
    key_id: str

    def payload_chunks(self) -> Iterator[bytes]:
        """Yield the exact payload bytes in pieces (one per literal piece and per token bucket)."""
        return _render(self.pieces)

    def _ends(self) -> tuple[bytes, bytes]:
        sig = base64.b64encode(self.signature).decode("ascii")
        env = {"payloadType": self.ptype, "payload": "\x00", "signatures": [{"keyid": self.key_id, "sig": sig}]}
        head, tail = json.dumps(env, separators=(",", ":"), sort_keys=True).encode().split(b"\\u0000")
        return head, tail

    @property
    def envelope_size(self) -> int:
        """Return the size of the envelope text in bytes."""
        head, tail = self._ends()
        return len(head) + 4 * ((self.size + 2) // 3) + len(tail)

    def envelope_chunks(self) -> Iterator[bytes]:
        """Yield the envelope text (what `sign_envelope` returns) in pieces."""
        head, tail = self._ends()
        yield head
        carry = b""
        for chunk in self.payload_chunks():
            data = carry + chunk
            cut = len(data) - len(data) % 3  # base64 of whole 3-byte groups joins without padding
            yield binascii.b2a_base64(data[:cut], newline=False)
            carry = data[cut:]
        if carry:
            yield binascii.b2a_base64(carry, newline=False)
        yield tail


def _render(pieces: tuple[Piece, ...]) -> Iterator[bytes]:
    for p in pieces:
        if isinstance(p, TokenList):
            yield from list_json_chunks(p)
        elif isinstance(p, Text):
            yield from p.rendered()
        else:
            yield p


def seal_streamed(ptype: str, obj: dict[str, Any], signing_key: nacl.signing.SigningKey) -> Streamed:
    """Sign canonical_json(obj) (TokenList values as sorted hex arrays, Text values as strings) without
    ever holding it whole."""
    pieces = tuple(_pieces(obj))
    size = sum(_size(p) for p in pieces)
    t = ptype.encode()
    header = b"DSSEv1 %d %s %d " % (len(t), t, size)
    digest = hashlib.sha256()
    signature = sign_stream(bytes(signing_key), header, lambda: _render(pieces), digest)
    return Streamed(ptype, pieces, size, digest.hexdigest(), signature, keyid(bytes(signing_key.verify_key)))


def sign_stream(seed: bytes, header: bytes, chunks: Callable[[], Iterable[bytes]], also: Any = None) -> bytes:
    """Return the Ed25519 signature (RFC 8032) of header ‖ chunks() for the key of seed, reading chunks() twice.

    Ed25519 hashes the message twice (for the nonce r, then for the challenge k); PyNaCl only signs a
    message held whole, so this puts the signature together from libsodium's scalar and point
    operations instead. The result is byte for byte what `SigningKey.sign` gives (tests compare).
    `also`, a hash object, is fed the chunks (not the header) on the first pass.
    """
    h = hashlib.sha512(seed).digest()
    a = bytearray(h[:32])
    a[0] &= 248
    a[31] = (a[31] & 127) | 64
    public = nacl.bindings.crypto_sign_seed_keypair(seed)[0][:32]
    hr = hashlib.sha512(h[32:])
    hr.update(header)
    for chunk in chunks():
        hr.update(chunk)
        if also is not None:
            also.update(chunk)
    r = nacl.bindings.crypto_core_ed25519_scalar_reduce(hr.digest())
    big_r = nacl.bindings.crypto_scalarmult_ed25519_base_noclamp(r)
    hk = hashlib.sha512(big_r + public)
    hk.update(header)
    for chunk in chunks():
        hk.update(chunk)
    k = nacl.bindings.crypto_core_ed25519_scalar_reduce(hk.digest())
    s = nacl.bindings.crypto_core_ed25519_scalar_add(nacl.bindings.crypto_core_ed25519_scalar_mul(k, bytes(a)), r)
    return bytes(big_r + s)
