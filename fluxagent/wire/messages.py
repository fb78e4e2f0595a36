"""The four message builders, the allowlist registry, and `seal`, which refuses anything off the list.

The registry is the single statement of what may leave the machine: every key path, its type,
and the clause 08 item it belongs to (docs/ARCHITECTURE.md, "One allowlist registry"). The
README table is rendered from it.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import operator
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import nacl.signing

from fluxagent.errors import AllowlistError
from fluxagent.facts import Counts, is_version
from fluxagent.identifiers import TokenList, TokenSet, canonical_hostname, diff
from fluxagent.kinds import ENDPOINTS, KINDS, LICENSE_STATES
from fluxagent.wire import envelope
from fluxagent.wire.stream import Streamed, list_json_size, seal_streamed

LICENSE = "License validation"
HEARTBEAT = "Heartbeat metrics"
DIGEST = "Infrastructure digest"
UPDATES = "Update delivery"
EVERY = "All four (instance ID and signature)"


_HEX = re.compile(r"^[0-9a-f]+$")
# the one shape of a vendor license id: `validate` (license/file.py) and the allowlist both use is_license_id
_LICENSE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
LICENSE_ID_SHAPE = "1 to 64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_NONCE = re.compile(r"^[A-Za-z0-9_-]{22}$")


def is_license_id(v: Any) -> bool:
    """Return whether v is a vendor license id the wire accepts (LICENSE_ID_SHAPE)."""
    return isinstance(v, str) and bool(_LICENSE_ID.fullmatch(v))


def _uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**53


def _hex(n: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and len(v) == n and bool(_HEX.match(v))


def _public_key(v: Any) -> bool:
    try:
        return isinstance(v, str) and len(base64.b64decode(v, validate=True)) == 32
    except ValueError:
        return False


def _tokens(v: Any) -> bool:
    if isinstance(v, TokenList):  # packed, sorted and deduplicated by finish(): valid by construction
        return v.finished
    # checks in C over the whole list rather than Python per token: a full digest holds a million
    if not isinstance(v, list) or not set(map(type, v)) <= {str}:
        return False
    if not all(map((32).__eq__, map(len, v))):
        return False
    try:
        joined = "".join(v).encode("ascii")
    except UnicodeEncodeError:
        return False
    return not joined.translate(None, b"0123456789abcdef") and all(map(operator.lt, v, itertools.islice(v, 1, None)))


# value type name → (description for people, validator)
TYPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "uint": ("non-negative integer", _uint),
    "bool": ("true/false", lambda v: isinstance(v, bool)),
    "one": ("the integer 1", lambda v: v == 1 and not isinstance(v, bool)),
    "hostname": ("DNS name", lambda v: isinstance(v, str) and canonical_hostname(v) is not None),
    "uuid": ("random UUID", lambda v: isinstance(v, str) and bool(_UUID.match(v))),
    "nonce": ("16 random bytes, base64url", lambda v: isinstance(v, str) and bool(_NONCE.match(v))),
    "version": ("version string", is_version),
    "license_id": (
        "vendor license id or null",
        lambda v: v is None or is_license_id(v),
    ),
    "license_state": ("one of " + "/".join(LICENSE_STATES), lambda v: v in LICENSE_STATES),
    "public_key": ("Ed25519 public key, base64", _public_key),
    "key_id": ("16 hex digits", _hex(16)),
    "root": ("64 hex digits", _hex(64)),
    "tokens": ("sorted list of 32-hex keyed tokens", _tokens),
    "object": ("object", lambda v: isinstance(v, dict)),
}


@dataclass(frozen=True)
class Field:
    """One allowlisted key path of a payload."""

    kind: str  # a message kind, or "*" for the payload fields every message carries
    path: str
    type: str
    item: str
    meaning: str
    # True when the kind cannot be built without this field: if the approved schema version lacks it,
    # the kind is held back instead of sent without it (docs/OPERATOR.md, "Approving a wider schema")
    required: bool = False

    @property
    def canonical(self) -> tuple[str, str, str, str]:
        """The part of a field an operator approves: kind, path, type, clause 08 item (not the wording)."""
        return (self.kind, self.path, self.type, self.item)


REGISTRY: tuple[Field, ...] = (
    Field("*", "v", "one", EVERY, "protocol version"),
    Field("*", "aud", "hostname", EVERY, "the licensing server this message is for"),
    Field("*", "iid", "uuid", EVERY, "instance ID (random, made by `fluxagent init`)"),
    Field("*", "seq", "uint", EVERY, "message counter, never reused"),
    Field("*", "ts", "uint", EVERY, "send time, Unix seconds"),
    Field("*", "nonce", "nonce", EVERY, "random, makes each message unique"),
    Field("*", "body", "object", EVERY, "the message body below"),
    Field("license", "bound_domain", "hostname", LICENSE, "the domain the license is bound to"),
    Field("license", "license", "object", LICENSE, "license status"),
    Field("license", "license.id", "license_id", LICENSE, "license id from the vendor's license file"),
    Field("license", "license.state", "license_state", LICENSE, "license status as this instance sees it"),
    Field("license", "public_key", "public_key", LICENSE, "the instance's signing key, to check its signature"),
    Field("heartbeat", "platform_version", "version", HEARTBEAT, "FluxBilling version"),
    Field("heartbeat", "hostname", "hostname", HEARTBEAT, "this server's host name"),
    Field("heartbeat", "counts", "object", HEARTBEAT, "aggregate counts"),
    Field("heartbeat", "counts.active_clients", "uint", HEARTBEAT, "number of active clients"),
    Field("heartbeat", "counts.total_users", "uint", HEARTBEAT, "number of users"),
    Field("heartbeat", "counts.servers_total", "uint", HEARTBEAT, "number of inventory servers"),
    Field("digest", "key_id", "key_id", DIGEST, "which local hashing key made the tokens"),
    Field("digest", "root", "root", DIGEST, "hash over all tokens, to detect change"),
    Field("digest", "full", "bool", DIGEST, "whether the token lists follow"),
    Field("digest", "servers", "tokens", DIGEST, "keyed hashes of server identifiers"),
    Field("digest", "networks", "tokens", DIGEST, "keyed hashes of network ranges"),
)
# ---- digest deltas (docs/PROTOCOL.md "Digest deltas"): kept as one block, added to the v1 fields ----
DIGEST_DELTA: tuple[Field, ...] = (
    Field("digest", "base", "root", DIGEST, "the acknowledged root a delta applies to"),
    Field("digest", "added_servers", "tokens", DIGEST, "keyed hashes of servers added since `base`"),
    Field("digest", "removed_servers", "tokens", DIGEST, "keyed hashes of servers removed since `base`"),
    Field("digest", "added_networks", "tokens", DIGEST, "keyed hashes of network ranges added since `base`"),
    Field("digest", "removed_networks", "tokens", DIGEST, "keyed hashes of network ranges removed since `base`"),
)
REGISTRY = REGISTRY + DIGEST_DELTA
# ---- end of digest deltas ----

_BY_KIND: dict[str, dict[str, Field]] = {kind: {f.path: f for f in REGISTRY if f.kind == kind} for kind in KINDS}
_COMMON: dict[str, Field] = {f.path: f for f in REGISTRY if f.kind == "*"}


@dataclass(frozen=True)
class Message:
    """An unsealed message: its kind and body (the payload's `body`)."""

    kind: str
    body: dict[str, Any]

    @property
    def endpoint(self) -> str:
        return ENDPOINTS[self.kind]


# A sealed message whose envelope is larger than this keeps it as a stream (`streamed`), never whole.
STREAM_ABOVE = 2**20


@dataclass(frozen=True)
class Sealed:
    """A sealed message: exact payload bytes, decoded payload and the envelope text to send.

    A large digest is `streamed` instead: `payload` and `envelope` are then empty, `obj` holds the
    token lists packed, and `envelope_chunks()` produces the envelope. `summary` is what the ledger
    records of a digest instead of its lists.
    """

    kind: str
    endpoint: str
    payload: bytes
    obj: dict[str, Any]
    envelope: bytes
    streamed: Streamed | None = None
    summary: dict[str, Any] | None = None
    sha256: str = ""

    @property
    def payload_sha256(self) -> str:
        if self.sha256:
            return self.sha256
        return self.streamed.sha256 if self.streamed else hashlib.sha256(self.payload).hexdigest()

    @property
    def payload_size(self) -> int:
        return self.streamed.size if self.streamed else len(self.payload)

    @property
    def envelope_size(self) -> int:
        return self.streamed.envelope_size if self.streamed else len(self.envelope)

    def envelope_chunks(self) -> Iterator[bytes]:
        """Yield the envelope text in pieces (one piece unless streamed)."""
        if self.streamed:
            yield from self.streamed.envelope_chunks()
        else:
            yield self.envelope


def digest_summary(body: dict[str, Any]) -> dict[str, Any]:
    """Return a digest body with each token list replaced by its length: what the ledger keeps."""
    return {k: (len(v) if isinstance(v, list | TokenList) else v) for k, v in body.items()}


def ledger_summary(payload: bytes) -> dict[str, Any] | None:
    """Return the summary of a digest payload (its body's summary and the payload size), None if unreadable."""
    try:
        body = json.loads(payload).get("body")
    except (ValueError, AttributeError, RecursionError):
        return None
    return {**digest_summary(body), "payload_bytes": len(payload)} if isinstance(body, dict) else None


def check_allowlist(kind: str, payload: dict[str, Any], fields: Iterable[Field] | None = None) -> None:
    """Raise AllowlistError unless every key path of payload is allowed for kind with a valid value.

    fields: the allowed fields (default: the whole REGISTRY); the agent passes the fields both the
    running registry and the operator's approved schema version allow.
    """
    if kind not in _BY_KIND:
        raise AllowlistError(f"unknown message kind {kind!r}")
    if fields is None:
        common, by_kind = _COMMON, _BY_KIND[kind]
    else:
        listed = tuple(fields)
        common = {f.path: f for f in listed if f.kind == "*"}
        by_kind = {f.path: f for f in listed if f.kind == kind}
    problems: list[str] = []
    _walk(payload, "", common, problems)
    for path in _COMMON:
        if path not in payload:
            problems.append(f"{path}: missing")
    body = payload.get("body")
    if isinstance(body, dict):
        _walk(body, "", by_kind, problems, prefix="body.")
    if problems:
        raise AllowlistError(f"{kind} payload refused by the allowlist: " + "; ".join(problems))


def _walk(obj: dict[str, Any], base: str, allowed: dict[str, Field], problems: list[str], prefix: str = "") -> None:
    for key, value in obj.items():
        path = f"{base}{key}"
        f = allowed.get(path)
        if f is None:
            problems.append(f"{prefix}{path}: not in the allowlist")
            continue
        if not TYPES[f.type][1](value):
            problems.append(f"{prefix}{path}: not a valid {TYPES[f.type][0]}")
            continue
        if f.type == "object" and not (prefix == "" and path == "body"):
            _walk(value, f"{path}.", allowed, problems, prefix)


def seal(
    message: Message,
    *,
    signing_key: nacl.signing.SigningKey,
    iid: str,
    aud: str,
    seq: int,
    now: int,
    nonce: bytes,
    fields: Iterable[Field] | None = None,
) -> Sealed:
    """Return the DSSE-sealed message; raises AllowlistError if any field is off the allowed fields.

    fields: what may be sent (default: the whole REGISTRY); see `check_allowlist`.
    """
    payload_obj: dict[str, Any] = {
        "v": 1,
        "aud": aud,
        "iid": iid,
        "seq": seq,
        "ts": now,
        "nonce": base64.urlsafe_b64encode(nonce).rstrip(b"=").decode("ascii"),
        "body": message.body,
    }
    check_allowlist(message.kind, payload_obj, fields)
    ptype = envelope.payload_type(message.kind)
    summary = digest_summary(message.body) if message.kind == "digest" else None
    if any(isinstance(v, TokenList) for v in message.body.values()):
        st = seal_streamed(ptype, payload_obj, signing_key)
        if summary is not None:
            summary["payload_bytes"] = st.size
        if st.envelope_size > STREAM_ABOVE:
            return Sealed(message.kind, message.endpoint, b"", payload_obj, b"", st, summary, st.sha256)
        payload, env = b"".join(st.payload_chunks()), b"".join(st.envelope_chunks())
        return Sealed(message.kind, message.endpoint, payload, json.loads(payload), env, summary=summary)
    payload = envelope.canonical_json(payload_obj)
    env = envelope.sign_envelope(ptype, payload, signing_key)
    if summary is not None:
        summary["payload_bytes"] = len(payload)
    return Sealed(message.kind, message.endpoint, payload, payload_obj, env, summary=summary)


# ---- builders: pure, values in, Message out ----


def build_license(bound_domain: str, license_id: str | None, state: str, public_key: bytes) -> Message:
    """Return the license message for the bound domain, license id/state and the instance public key."""
    return Message(
        "license",
        {
            "bound_domain": bound_domain,
            "license": {"id": license_id, "state": state},
            "public_key": base64.b64encode(public_key).decode("ascii"),
        },
    )


def build_heartbeat(platform_version: str, hostname: str, counts: Counts) -> Message:
    """Return the heartbeat message from the platform version, this host's name and the counts."""
    return Message(
        "heartbeat",
        {
            "platform_version": platform_version,
            "hostname": hostname,
            "counts": {
                "active_clients": counts.active_clients,
                "total_users": counts.total_users,
                "servers_total": counts.servers_total,
            },
        },
    )


DELTA_LISTS = ("added_servers", "removed_servers", "added_networks", "removed_networks")


def build_digest(
    tokens: TokenSet,
    key_id: str,
    last_acked_root: str | None,
    *,
    force_full: bool = False,
    base: TokenSet | Callable[[], TokenSet | None] | None = None,
) -> Message:
    """Return the digest: unchanged (no lists) when its root is the last acknowledged one, a delta
    against `base` (the token set of that root) when that is under half the full form, else full.

    `tokens` and `base` must be finished (sorted, deduplicated). `base` may be a function giving it,
    called only when a delta is worth trying (the root changed): the caller reads it no sooner.
    """
    root = tokens.root
    if not force_full and root == last_acked_root:
        return Message("digest", {"key_id": key_id, "root": root, "full": False})
    if callable(base):
        base = base() if not force_full and last_acked_root is not None else None
    if not force_full and base is not None and last_acked_root is not None:
        added_servers, removed_servers = diff(base.servers, tokens.servers)
        added_networks, removed_networks = diff(base.networks, tokens.networks)
        lists = dict(zip(DELTA_LISTS, (added_servers, removed_servers, added_networks, removed_networks),
                         strict=True))
        delta_size = sum(list_json_size(len(v)) for v in lists.values()) + 100  # "base" and the longer keys
        full_size = list_json_size(len(tokens.servers)) + list_json_size(len(tokens.networks))
        if 2 * delta_size < full_size:
            return Message("digest", {"key_id": key_id, "root": root, "full": False, "base": last_acked_root,
                                      **lists})
    return Message("digest", {"key_id": key_id, "root": root, "full": True,
                              "servers": tokens.servers, "networks": tokens.networks})


def build_credentials() -> Message:
    """Return the update-credentials request: an empty body; the envelope authenticates the instance."""
    return Message("credentials", {})


def registry_table(fields: Iterable[Field] = REGISTRY) -> str:
    """Return the Markdown table of the fields (default: the registry; the README's "what is sent" table)."""
    lines = [
        "| message | field | type | clause 08 item | meaning |",
        "|---|---|---|---|---|",
    ]
    for f in fields:
        kind = "every message" if f.kind == "*" else f"`{f.kind}` → `{ENDPOINTS[f.kind]}`"
        path = f.path if f.kind == "*" else f"body.{f.path}"
        lines.append(f"| {kind} | `{path}` | {TYPES[f.type][0]} | {f.item} | {f.meaning} |")
    lines.append(
        f"| `credentials` → `{ENDPOINTS['credentials']}` | (empty body) | — | {UPDATES} |"
        " the signed envelope alone asks for short-lived update credentials |"
    )
    return "\n".join(lines)
