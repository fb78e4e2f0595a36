"""Canonical forms and keyed BLAKE2b tokens of server and network identifiers (docs/PROTOCOL.md §2, digest).

Fast paths (socket.inet_pton, precompiled regexes) keep tokenizing near 1 µs per identifier;
tests check them against the `ipaddress` reference behaviour.
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
import re
import socket
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import idna

KINDS = ("host", "ip", "net", "mac", "machine")
_PERSON = {kind: f"fa1-{kind}".encode() for kind in KINDS}
TOKEN_BYTES = 16

_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_HOSTNAME_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_MAC_STRIP = re.compile(r"[\s:.\-]")
_HEX12 = re.compile(r"^[0-9a-f]{12}$")
_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
# the inline paths of add_networks: exact prefix texts, their masks and their length byte
_PREFIXES4 = {str(p): p for p in range(33)}
_PREFIXES6 = {str(p): p for p in range(129)}
_MASK4 = [((1 << p) - 1) << (32 - p) for p in range(33)]
_MASK6 = [((1 << p) - 1) << (128 - p) for p in range(129)]
_PREFIX_BYTE = [bytes((p,)) for p in range(129)]


def canonical_hostname(value: str) -> str | None:
    """Return the canonical ASCII form of a DNS name (IDNA 2008 / UTS 46), or None if invalid."""
    s = value.strip().rstrip(".") if isinstance(value, str) else ""
    if not s or len(s) > 253:
        return None
    if s.isascii():
        s = s.lower()
        if "xn--" in s:  # validate A-labels by a round trip through IDNA 2008
            try:
                s = idna.encode(idna.decode(s), uts46=True).decode("ascii")
            except (idna.IDNAError, UnicodeError, ValueError):
                return None
    else:
        try:
            s = idna.encode(s, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            return None
    if len(s) > 253 or not _HOSTNAME_RE.match(s):
        return None
    return s


def canonical_ip(value: str) -> bytes | None:
    """Return the packed bytes of an IP address (zone dropped, IPv4-mapped unwrapped), or None."""
    if not isinstance(value, str):
        return None
    s = value.strip()
    if ":" not in s:
        try:
            return socket.inet_pton(socket.AF_INET, s)
        except (OSError, ValueError):  # ValueError: NUL or unencodable text from the database
            return None
    s = s.split("%", 1)[0]
    if s.startswith("[") and s.endswith("]"):
        s = s[1:-1]
    try:
        packed = socket.inet_pton(socket.AF_INET6, s)
    except (OSError, ValueError):
        return None
    if packed[:12] == _MAPPED_PREFIX:
        return packed[12:]
    return packed


def canonical_network(value: str) -> bytes | None:
    """Return network address bytes + prefix length byte of a CIDR (host bits cleared), or None.

    `::ffff:a.b.c.d/n` with n ≥ 96 maps to the IPv4 network a.b.c.d/(n-96); a bare address is
    its host network (/32 or /128), as `ipaddress.ip_network(strict=False)` treats it. The
    rare notations the fast path does not handle (netmask or hostmask instead of a prefix
    length, a zone on an IPv6 network, a zero-padded prefix) go through `ipaddress` itself.
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    addr_text, slash, prefix_text = text.partition("/")
    packed = _pton(addr_text)
    if packed is None or (slash and not (prefix_text.isascii() and prefix_text.isdigit() and len(prefix_text) <= 3)):
        return _slow_network(text)
    bits = len(packed) * 8
    prefix = int(prefix_text) if slash else bits
    if prefix > bits:
        return None
    return _masked(packed, prefix)


def _masked(packed: bytes, prefix: int) -> bytes:
    bits = len(packed) * 8
    if bits == 128 and packed[:12] == _MAPPED_PREFIX and prefix >= 96:
        packed, prefix, bits = packed[12:], prefix - 96, 32
    as_int = int.from_bytes(packed, "big")
    mask = ((1 << prefix) - 1) << (bits - prefix) if prefix else 0
    return (as_int & mask).to_bytes(bits // 8, "big") + bytes((prefix,))


def _slow_network(text: str) -> bytes | None:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    return _masked(net.network_address.packed, net.prefixlen)


def _pton(text: str) -> bytes | None:
    try:
        if ":" in text:
            return socket.inet_pton(socket.AF_INET6, text)
        return socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):
        return None


def canonical_mac(value: str) -> bytes | None:
    """Return the 6 bytes of a MAC in any common notation (colons, dashes, dots, bare), or None."""
    if not isinstance(value, str):
        return None
    s = value.strip().lower()
    if ":" in s or "-" in s:  # 0:1a:2b:… allows single-digit groups
        parts = re.split(r"[:-]", s)
        if len(parts) == 6 and all(1 <= len(p) <= 2 for p in parts):
            s = "".join(p.rjust(2, "0") for p in parts)
    s = _MAC_STRIP.sub("", s)
    if not _HEX12.match(s):
        return None
    return bytes.fromhex(s)


def canonical_machine_id(value: str) -> bytes | None:
    """Return the 16 bytes of a /etc/machine-id value (32 hex digits), or None."""
    s = value.strip().lower() if isinstance(value, str) else ""
    if len(s) != 32:
        return None
    try:
        raw = bytes.fromhex(s)
    except ValueError:
        return None
    return None if raw == bytes(16) else raw


def token(kind: str, canonical: bytes, key: bytes) -> bytes:
    """Return the 16-byte keyed BLAKE2b token of canonical bytes for kind."""
    return hashlib.blake2b(canonical, key=key, person=_PERSON[kind], digest_size=TOKEN_BYTES).digest()


def key_id(key: bytes) -> str:
    """Return the 16-hex-digit id of a digest key; it reveals nothing about the key."""
    return hashlib.blake2b(b"", key=key, person=b"fa1-keyid", digest_size=8).hexdigest()


class TokenList:
    """Tokens kept compactly in 256 byte-buckets (16 B each, no object per token) until finished.

    finish() sorts and deduplicates bucket by bucket, so a million tokens cost ~16 MB, not ~64 MB.
    Hot loops append to `buckets[token[0]]` directly.
    """

    __slots__ = ("buckets", "finished")

    def __init__(self, tokens: Iterable[bytes] = ()) -> None:
        self.buckets = [bytearray() for _ in range(256)]
        self.finished = False
        for t in tokens:
            self.append(t)

    def append(self, tok: bytes) -> None:
        """Add a 16-byte token."""
        self.buckets[tok[0]] += tok
        self.finished = False

    def finish(self) -> None:
        """Sort and deduplicate in place."""
        for i, bucket in enumerate(self.buckets):
            if bucket:
                whole = bytes(bucket)  # slices of bytes are one object per token, of a bytearray two
                toks = {whole[j:j + TOKEN_BYTES] for j in range(0, len(whole), TOKEN_BYTES)}
                self.buckets[i] = bytearray(b"".join(sorted(toks)))
        self.finished = True

    def add_sorted(self, packed: bytes | memoryview) -> None:
        """Append a run of packed sorted unique 16-byte tokens that sort after every token held.

        Bucket by bucket (the tokens of one first byte are one stretch of a sorted run), so a stored
        set is read back a chunk at a time; mark the list `finished` after the last run.
        """
        view = memoryview(packed)
        n = len(view) // TOKEN_BYTES
        lo = 0
        while lo < n:
            first = view[lo * TOKEN_BYTES]
            hi = bisect.bisect_left(range(n), first + 1, lo, key=lambda j: view[j * TOKEN_BYTES])
            self.buckets[first] += view[lo * TOKEN_BYTES:hi * TOKEN_BYTES]
            lo = hi

    def packed(self) -> Iterator[memoryview]:
        """Yield the sorted tokens as packed runs (one per first byte); finish() first."""
        for bucket in self.buckets:
            if bucket:
                yield memoryview(bucket)

    def __len__(self) -> int:
        return sum(len(b) for b in self.buckets) // TOKEN_BYTES

    def __iter__(self) -> Iterator[bytes]:
        for bucket in self.buckets:
            for j in range(0, len(bucket), TOKEN_BYTES):
                yield bytes(bucket[j:j + TOKEN_BYTES])

    def hex(self) -> list[str]:
        """Return the tokens as 32-hex strings, in order."""
        return [t.hex() for t in self]

    def feed(self, h: Any) -> None:
        """Update hash object h with every token in order (no per-token objects)."""
        for bucket in self.buckets:
            h.update(bucket)


def diff(old: TokenList, new: TokenList) -> tuple[TokenList, TokenList]:
    """Return (added, removed): the finished lists of tokens in new but not old, and in old but not new."""
    added, removed = TokenList(), TokenList()
    for i, (a, b) in enumerate(zip(old.buckets, new.buckets, strict=True)):
        if a == b:
            continue
        # one first byte at a time: the per-token objects live only as long as one bucket's set
        sa, sb = bytes(a), bytes(b)
        olds = {sa[j:j + TOKEN_BYTES] for j in range(0, len(sa), TOKEN_BYTES)}
        news = {sb[j:j + TOKEN_BYTES] for j in range(0, len(sb), TOKEN_BYTES)}
        added.buckets[i] = bytearray(b"".join(sorted(news - olds)))
        removed.buckets[i] = bytearray(b"".join(sorted(olds - news)))
    added.finished = removed.finished = True
    return added, removed


@dataclass
class TokenSet:
    """Tokens of one digest, deduplicated after canonicalization, plus counters of what was skipped."""

    servers: TokenList = field(default_factory=TokenList)
    networks: TokenList = field(default_factory=TokenList)
    skipped: Counter[str] = field(default_factory=Counter)

    def finish(self) -> TokenSet:
        """Sort and deduplicate both lists; return self."""
        self.servers.finish()
        self.networks.finish()
        return self

    @property
    def root(self) -> str:
        """Hex BLAKE2b over the sorted tokens of both lists, each list length-prefixed; finish() first."""
        h = hashlib.blake2b(person=b"fa1-root", digest_size=32)
        h.update(len(self.servers).to_bytes(8, "big"))
        self.servers.feed(h)
        h.update(len(self.networks).to_bytes(8, "big"))
        self.networks.feed(h)
        return h.hexdigest()


def _hasher(kind: str, key: bytes) -> Any:
    # a keyed state copied per token costs ~0.5 µs less than a fresh keyed blake2b
    return hashlib.blake2b(key=key, person=_PERSON[kind], digest_size=TOKEN_BYTES)


def add_servers(tokens: TokenSet, rows: Iterable[tuple[object, ...]], key: bytes) -> None:
    """Tokenize inventory (hostname, ip) rows: the hostname when present, else the IP; skip and count the rest."""
    buckets = tokens.servers.buckets
    host_h, ip_h = _hasher("host", key), _hasher("ip", key)
    match = _HOSTNAME_RE.match
    pton, af4 = socket.inet_pton, socket.AF_INET
    for hostname, ip in rows:
        if hostname.__class__ is str and hostname:
            canon: str | None
            # fast path for plain ASCII names; lowercased first, so an A-label in any case ("XN--")
            # takes the IDNA check of canonical_hostname exactly like its lowercase form
            canon = hostname.strip().rstrip(".").lower() if hostname.isascii() and len(hostname) <= 253 else None
            if canon is None or "xn--" in canon:
                canon = canonical_hostname(hostname)
            elif not canon or not match(canon):
                canon = None
            if canon is not None:
                h = host_h.copy()
                h.update(canon.encode("ascii"))
                d = h.digest()
                buckets[d[0]] += d
                continue
            if hostname.strip():
                tokens.skipped["server_hostname_invalid"] += 1
            # fall back to the address: the server is still counted once
        if isinstance(ip, str) and ip.strip():
            try:  # inline fast path for a plain IPv4 address; anything else takes canonical_ip
                packed: bytes | None = pton(af4, ip)
            except (OSError, ValueError):
                packed = canonical_ip(ip)
            if packed is not None:
                h = ip_h.copy()
                h.update(packed)
                d = h.digest()
                buckets[d[0]] += d
                continue
            tokens.skipped["server_ip_invalid"] += 1
        elif not (isinstance(hostname, str) and hostname.strip()):
            tokens.skipped["server_without_identifier"] += 1


def add_networks(tokens: TokenSet, cidrs: Iterable[object], key: bytes) -> None:
    """Tokenize CIDR strings into the networks list; skip and count what does not parse."""
    buckets = tokens.networks.buckets
    net_h = _hasher("net", key)
    pton, af4, af6, pfx_byte = socket.inet_pton, socket.AF_INET, socket.AF_INET6, _PREFIX_BYTE
    for cidr in cidrs:
        canon = None
        if cidr.__class__ is str:  # inline fast paths for the common "a.b.c.d/n" and "x:y::/n"
            addr, _, pfx = cidr.partition("/")
            try:
                if ":" not in addr:
                    if (p := _PREFIXES4.get(pfx)) is not None:
                        canon = (int.from_bytes(pton(af4, addr), "big") & _MASK4[p]).to_bytes(4, "big") + pfx_byte[p]
                elif (p := _PREFIXES6.get(pfx)) is not None:
                    packed = pton(af6, addr)
                    if packed[:12] != _MAPPED_PREFIX:  # IPv4-mapped ranges take the full path below
                        canon = (int.from_bytes(packed, "big") & _MASK6[p]).to_bytes(16, "big") + pfx_byte[p]
            except (OSError, ValueError):
                canon = None
        if canon is None:
            canon = canonical_network(cidr) if cidr.__class__ is str else None
        if canon is None:
            tokens.skipped["network_invalid"] += 1
            continue
        h = net_h.copy()
        h.update(canon)
        d = h.digest()
        buckets[d[0]] += d


def add_machine(tokens: TokenSet, machine_id: str | None, macs: Iterable[str], key: bytes) -> None:
    """Add this host's token: machine-id, else the lowest non-loopback MAC; count when neither exists."""
    raw = canonical_machine_id(machine_id) if machine_id else None
    if raw is not None:
        tokens.servers.append(token("machine", raw, key))
        return
    candidates = sorted(m for m in (canonical_mac(x) for x in macs) if m and m != bytes(6))
    if candidates:
        tokens.servers.append(token("mac", candidates[0], key))
    else:
        tokens.skipped["host_without_machine_id"] += 1
