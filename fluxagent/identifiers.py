"""Canonical forms and keyed BLAKE2b tokens of server and network identifiers (DESIGN §3).

Fast paths (socket.inet_pton, precompiled regexes) keep tokenizing near 1 µs per identifier;
tests check them against the `ipaddress` reference behaviour.
"""

from __future__ import annotations

import hashlib
import re
import socket
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import idna

KINDS = ("host", "ip", "net", "mac", "machine")
_PERSON = {kind: f"fa1-{kind}".encode() for kind in KINDS}
TOKEN_BYTES = 16

_LABEL_RE = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_MAC_STRIP = re.compile(r"[\s:.\-]")
_HEX12 = re.compile(r"^[0-9a-f]{12}$")
_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"


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
    if len(s) > 253:
        return None
    for label in s.split("."):
        if not _LABEL_RE.match(label):
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
        except OSError:
            return None
    s = s.split("%", 1)[0]
    if s.startswith("[") and s.endswith("]"):
        s = s[1:-1]
    try:
        packed = socket.inet_pton(socket.AF_INET6, s)
    except OSError:
        return None
    if packed[:12] == _MAPPED_PREFIX:
        return packed[12:]
    return packed


def canonical_network(value: str) -> bytes | None:
    """Return network address bytes + prefix length byte of a CIDR (host bits cleared), or None.

    `::ffff:a.b.c.d/n` with n ≥ 96 maps to the IPv4 network a.b.c.d/(n-96); a bare address is
    its host network (/32 or /128), as `ipaddress.ip_network(strict=False)` treats it.
    """
    if not isinstance(value, str):
        return None
    addr_text, slash, prefix_text = value.strip().partition("/")
    if ":" in addr_text and "%" in addr_text:
        return None  # ip_network refuses scoped addresses
    packed = _pton(addr_text)
    if packed is None:
        return None
    bits = len(packed) * 8
    if slash:
        if not prefix_text.isascii() or not prefix_text.isdigit() or len(prefix_text) > 3:
            return None
        prefix = int(prefix_text)
        if prefix > bits:
            return None
    else:
        prefix = bits
    if bits == 128 and packed[:12] == _MAPPED_PREFIX and prefix >= 96:
        packed, prefix, bits = packed[12:], prefix - 96, 32
    as_int = int.from_bytes(packed, "big")
    mask = ((1 << prefix) - 1) << (bits - prefix) if prefix else 0
    return (as_int & mask).to_bytes(bits // 8, "big") + bytes((prefix,))


def _pton(text: str) -> bytes | None:
    try:
        if ":" in text:
            return socket.inet_pton(socket.AF_INET6, text)
        return socket.inet_pton(socket.AF_INET, text)
    except OSError:
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


@dataclass
class TokenSet:
    """Tokens of one digest, deduplicated after canonicalization, plus counters of what was skipped."""

    servers: list[bytes] = field(default_factory=list)
    networks: list[bytes] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    def finish(self) -> TokenSet:
        """Sort and deduplicate both lists in place; return self."""
        for lst in (self.servers, self.networks):
            lst.sort()
            out = 0
            prev = b""
            for tok in lst:
                if tok != prev:
                    lst[out] = tok
                    out += 1
                    prev = tok
            del lst[out:]
        return self

    @property
    def root(self) -> str:
        """Hex BLAKE2b over the sorted tokens of both lists, each list tagged; call finish() first."""
        h = hashlib.blake2b(person=b"fa1-root", digest_size=32)
        h.update(len(self.servers).to_bytes(8, "big"))
        for tok in self.servers:
            h.update(tok)
        h.update(len(self.networks).to_bytes(8, "big"))
        for tok in self.networks:
            h.update(tok)
        return h.hexdigest()


def add_servers(tokens: TokenSet, rows: Iterable[tuple[object, object]], key: bytes) -> None:
    """Tokenize inventory (hostname, ip) rows: the hostname when present, else the IP; skip and count the rest."""
    append = tokens.servers.append
    host_person, ip_person = _PERSON["host"], _PERSON["ip"]
    blake = hashlib.blake2b
    for hostname, ip in rows:
        if isinstance(hostname, str) and hostname.strip():
            canon = canonical_hostname(hostname)
            if canon is not None:
                append(blake(canon.encode("ascii"), key=key, person=host_person, digest_size=16).digest())
                continue
            tokens.skipped["server_hostname_invalid"] += 1
            # fall back to the address: the server is still counted once
        if isinstance(ip, str) and ip.strip():
            packed = canonical_ip(ip)
            if packed is not None:
                append(blake(packed, key=key, person=ip_person, digest_size=16).digest())
                continue
            tokens.skipped["server_ip_invalid"] += 1
        elif not (isinstance(hostname, str) and hostname.strip()):
            tokens.skipped["server_without_identifier"] += 1


def add_networks(tokens: TokenSet, cidrs: Iterable[object], key: bytes) -> None:
    """Tokenize CIDR strings into the networks list; skip and count what does not parse."""
    append = tokens.networks.append
    person = _PERSON["net"]
    blake = hashlib.blake2b
    for cidr in cidrs:
        canon = canonical_network(cidr) if isinstance(cidr, str) else None
        if canon is None:
            tokens.skipped["network_invalid"] += 1
            continue
        append(blake(canon, key=key, person=person, digest_size=16).digest())


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
