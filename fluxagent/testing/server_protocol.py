"""The reference server's verifier: DSSE checks, instance registry, seq/nonce rules, receipts.

HTTP-free and thread-safe, so the rules a vendor backend must follow read in one place (§4).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nacl.signing

from fluxagent.errors import AllowlistError, EnvelopeError
from fluxagent.kinds import KIND_BY_ENDPOINT
from fluxagent.wire import envelope, messages

FULL_LISTS = ("servers", "networks")
DELTA_LISTS = messages.DELTA_LISTS


@dataclass
class LicensePolicy:
    """What the license receipt says; tests may change the fields while the server runs."""

    state: str = "valid"  # valid / grace / expired / revoked / invalid, or "auto": by the dates below
    license_id: str | None = "FLX-TEST-0001"
    expires_at: int = 4_102_444_800  # 2100-01-01
    grace_until: int = 4_103_654_400  # fourteen days later
    next_check_in: int = 6 * 3600

    def state_at(self, now: int) -> str:
        """Return the state a receipt issued at server time now carries ("auto" follows the dates)."""
        if self.state != "auto":
            return self.state
        return "valid" if now < self.expires_at else "grace" if now < self.grace_until else "expired"


@dataclass(frozen=True)
class IssuedCredential:
    """Update credentials the server handed out, kept so tests can check their expiry."""

    iid: str
    username: str
    secret: str
    registry: str
    issued_at: int
    expires_at: int


@dataclass
class Instance:
    """What the server remembers about one registered instance."""

    public_key: bytes
    last_seq: int = -1
    accepted: dict[int, tuple[bytes, dict[str, Any]]] = field(default_factory=dict)
    nonces: dict[str, int] = field(default_factory=dict)
    last_root: str | None = None
    # the token lists of last_root, sorted: the base the next delta applies to
    servers: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Outcome:
    """The verdict on one request: an error status and code, or a receipt body to sign."""

    status: int
    payload: dict[str, Any] | None = None  # decoded request payload, even when unverified
    error: str = ""
    detail: str = ""
    request: bytes = b""  # exact request payload bytes (for `req`)
    receipt_body: dict[str, Any] | None = None


class Rejected(Exception):
    """Internal: a request fails a rule; carries status, stable code and detail."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


class Verifier:
    """Checks requests against docs/PROTOCOL.md §3 and keeps the per-instance state under one lock."""

    def __init__(
        self,
        *,
        audience: str,
        clock: Callable[[], float],
        license: LicensePolicy,
        max_clock_skew: int = 86400,  # an agent clock ahead is reported by the agent, not punished here
        max_age: int = 30 * 86400,
        heartbeat_next_in: int | None = None,
        credentials_ttl: int = 900,
        registry: str = "registry.fluxbilling.example",
    ) -> None:
        self.audience = audience
        self.clock = clock
        self.license = license
        self.max_clock_skew = max_clock_skew
        # Spooled messages reach the server late after an outage; seq and nonce stop replays,
        # so only the future bound is tight.
        self.max_age = max_age
        self.heartbeat_next_in = heartbeat_next_in
        self.credentials_ttl = credentials_ttl
        self.registry = registry
        self.instances: dict[str, Instance] = {}
        self.always_need_full = False  # a fault for tests: answer need_full to every digest
        self.issued_credentials: list[IssuedCredential] = []
        self._lock = threading.RLock()

    def handle(self, path: str, data: bytes) -> Outcome:
        """Return the verdict on one request body posted to path; never raises for bad input."""
        payload: dict[str, Any] | None = None
        try:
            kind = KIND_BY_ENDPOINT.get(path)
            if kind is None:
                raise Rejected(404, "unknown_endpoint", f"no endpoint {path}")
            ptype, raw, sigs = envelope.parse_envelope(data)  # once: a full digest can be tens of MB
            payload = _decode(raw)
            with self._lock:
                return self._check(kind, ptype, raw, payload, sigs)
        except EnvelopeError as exc:
            return Outcome(400, payload, "bad_envelope", exc.message)
        except Rejected as exc:
            return Outcome(exc.status, payload, exc.code, exc.detail)

    def _check(
        self, kind: str, ptype: str, raw: bytes, payload: dict[str, Any] | None, sigs: list[tuple[str, bytes]]
    ) -> Outcome:
        if payload is None:
            raise Rejected(400, "bad_payload", "payload is not a JSON object")
        if ptype != envelope.payload_type(kind):
            raise Rejected(400, "wrong_type", f"payloadType {ptype!r} does not fit {kind}")
        iid = payload.get("iid")
        inst = self.instances.get(iid) if isinstance(iid, str) else None
        if inst is not None:
            key = inst.public_key
        elif kind == "license":
            key = _public_key(payload)
        else:
            raise Rejected(403, "unknown_instance", "instance not registered: send license first")
        verdict = _Verdict(ptype, raw, sigs, key)
        refused: AllowlistError | None = None
        try:
            messages.check_allowlist(kind, payload)
        except AllowlistError as exc:
            refused = exc
        raw_sha256 = verdict.wait()  # a bad signature is answered first, whatever else is wrong
        if refused is not None:
            raise Rejected(422, "allowlist", refused.message) from None
        assert isinstance(iid, str)  # the allowlist checked it is a UUID
        if payload["aud"] != self.audience:
            raise Rejected(400, "wrong_audience", f"aud is not {self.audience!r}")
        if kind == "license" and inst is not None and _public_key(payload) != inst.public_key:
            raise Rejected(409, "key_conflict", "instance is registered with another key")
        seq, nonce = payload["seq"], payload["nonce"]
        if inst is not None and seq in inst.accepted:
            seen, body = inst.accepted[seq]
            if seen != raw_sha256:
                raise Rejected(409, "seq_reused", f"seq {seq} was used for another payload")
            # An exact retry: at-least-once delivery, answered again with a fresh receipt.
            # Credentials are issued anew: the first ones may have expired meanwhile.
            if kind == "credentials":
                body = self._receipt_body(kind, iid, payload["body"], inst, int(self.clock()))
            return Outcome(200, payload, request=raw, receipt_body=body)
        now = int(self.clock())
        if payload["ts"] > now + self.max_clock_skew:
            raise Rejected(400, "ts_future", "ts is ahead of the server clock")
        if payload["ts"] < now - self.max_age:
            raise Rejected(400, "ts_stale", "ts is older than the server accepts")
        if inst is not None and seq <= inst.last_seq:
            raise Rejected(409, "seq_not_increasing", f"seq {seq} <= {inst.last_seq}")
        if inst is not None and nonce in inst.nonces:
            raise Rejected(409, "nonce_reused", "nonce already used with another seq")
        if inst is None:
            inst = self.instances[iid] = Instance(key)
        body = self._receipt_body(kind, iid, payload["body"], inst, now)
        inst.last_seq = seq
        inst.accepted[seq] = (raw_sha256, body)
        inst.nonces[nonce] = seq
        return Outcome(200, payload, request=raw, receipt_body=body)

    def _receipt_body(
        self, kind: str, iid: str, body: dict[str, Any], inst: Instance, now: int
    ) -> dict[str, Any]:
        if kind == "license":
            p = self.license
            return {
                "state": p.state_at(now),
                "license_id": p.license_id,
                "expires_at": p.expires_at,
                "grace_until": p.grace_until,
                "next_check_in": p.next_check_in,
            }
        if kind == "heartbeat":
            return {} if self.heartbeat_next_in is None else {"next_in": self.heartbeat_next_in}
        if kind == "digest":
            return {"need_full": self._digest(body, inst)}
        secret = secrets.token_urlsafe(32)
        expires_at = now + self.credentials_ttl
        cred = IssuedCredential(iid, f"instance-{iid}", secret, self.registry, now, expires_at)
        self.issued_credentials.append(cred)
        return {
            "username": cred.username,
            "secret": cred.secret,
            "registry": cred.registry,
            "expires_in": self.credentials_ttl,
        }

    def _digest(self, body: dict[str, Any], inst: Instance) -> bool:
        """Apply a digest to the instance's token set; return need_full. Raises Rejected (422)."""
        shape = digest_shape(body)
        if shape == "unchanged":
            return self.always_need_full or bool(body["root"] != inst.last_root)
        if shape == "full":
            servers, networks = body["servers"], body["networks"]
        else:
            if body["base"] != inst.last_root:
                # the change is already applied (its first answer was lost, and the agent built it
                # again): acknowledge the root held; otherwise a base unknown here: send it all
                return self.always_need_full or body["root"] != inst.last_root
            if self.always_need_full:
                return True
            servers = apply_delta(inst.servers, body["added_servers"], body["removed_servers"])
            networks = apply_delta(inst.networks, body["added_networks"], body["removed_networks"])
        if digest_root(servers, networks) != body["root"]:
            raise Rejected(422, "digest_root", "root does not match the token lists")
        inst.last_root, inst.servers, inst.networks = body["root"], servers, networks
        return self.always_need_full

    def forget_digests(self) -> None:
        """Drop every instance's digest token set, as a server that lost its state would."""
        with self._lock:
            for inst in self.instances.values():
                inst.last_root, inst.servers, inst.networks = None, [], []

    def digest_tokens(self, iid: str) -> tuple[str | None, list[str], list[str]]:
        """Return (root, servers, networks) held for instance iid; raises KeyError for an unknown one."""
        with self._lock:
            inst = self.instances[iid]
            return inst.last_root, list(inst.servers), list(inst.networks)

    def credentials(self) -> list[IssuedCredential]:
        """Return a snapshot of the update credentials issued so far."""
        with self._lock:
            return list(self.issued_credentials)

    def credentials_valid(self, username: str, secret: str) -> bool:
        """Return whether username/secret were issued and have not expired by the server clock."""
        now = self.clock()
        with self._lock:
            return any(
                c.username == username
                and secrets.compare_digest(c.secret, secret)
                and now < c.expires_at
                for c in self.issued_credentials
            )


def build_receipt(
    outcome: Outcome,
    signing_key: nacl.signing.SigningKey,
    now: int,
    mutate: str | None = None,
) -> bytes:
    """Return the signed receipt envelope for a 200 outcome, spoiled by mutate when given."""
    assert outcome.payload is not None and outcome.receipt_body is not None
    obj: dict[str, Any] = {
        "v": 1,
        "aud": outcome.payload["iid"],
        "req": "sha256:" + hashlib.sha256(outcome.request).hexdigest(),
        "nonce": outcome.payload["nonce"],
        "ts": now,
        "body": outcome.receipt_body,
    }
    ptype = envelope.RECEIPT_TYPE
    if mutate == "wrong_req":
        obj["req"] = "sha256:" + hashlib.sha256(outcome.request + b" ").hexdigest()
    elif mutate == "wrong_nonce":
        obj["nonce"] = base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()
    elif mutate == "wrong_aud":
        obj["aud"] = str(uuid.uuid4())
    elif mutate == "wrong_type":
        ptype = envelope.LICENSE_FILE_TYPE
    elif mutate == "unpinned":
        signing_key = nacl.signing.SigningKey.generate()
    payload = envelope.canonical_json(obj)
    signed = envelope.sign_envelope(ptype, payload, signing_key)
    if mutate == "truncated":
        return signed[: len(signed) // 2]
    if mutate == "unsigned":
        env = json.loads(signed)
        env["signatures"] = []
        return json.dumps(env, separators=(",", ":")).encode()
    return signed


class _Verdict:
    """The signature check of one request, and the SHA-256 of its payload once it verifies.

    libsodium and hashlib work without the GIL, so for a large payload (a full digest is tens of
    MB) they run in a thread while the allowlist walks the token lists; `wait()` still gives the
    verdict before any other answer is made.
    """

    BACKGROUND = 1 << 20  # payload bytes from which the check runs beside the others

    def __init__(self, ptype: str, payload: bytes, sigs: list[tuple[str, bytes]], key: bytes) -> None:
        self._args = (ptype, payload, sigs, key)
        self._error: EnvelopeError | None = None
        self._sha256 = b""
        self._thread: threading.Thread | None = None
        if len(payload) < self.BACKGROUND:
            self._run()
        else:
            self._thread = threading.Thread(target=self._run, name="verify", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        ptype, payload, sigs, key = self._args
        try:
            envelope.verify_parsed(ptype, payload, sigs, [key])
            self._sha256 = hashlib.sha256(payload).digest()
        except EnvelopeError as exc:
            self._error = exc
        except Exception as exc:  # fail closed: anything but a verified signature is a refusal
            self._error = EnvelopeError(f"signature check failed: {type(exc).__name__}")

    def wait(self) -> bytes:
        """Return the payload's SHA-256; raises Rejected (401) unless a signature verified."""
        if self._thread is not None:
            self._thread.join()
        if self._error is not None or not self._sha256:
            message = self._error.message if self._error is not None else "signature check did not finish"
            raise Rejected(401, "bad_signature", message)
        return self._sha256


def digest_shape(body: dict[str, Any]) -> str:
    """Return "full", "unchanged" or "delta" for a digest body of one of those forms; raises Rejected (422)."""
    lists = {k for k in (*FULL_LISTS, *DELTA_LISTS, "base") if k in body}
    if body["full"] and lists == set(FULL_LISTS):
        return "full"
    if not body["full"] and not lists:
        return "unchanged"
    if not body["full"] and lists == {*DELTA_LISTS, "base"}:
        return "delta"
    raise Rejected(422, "digest_shape", "a full digest carries servers and networks, a delta base and the four"
                   " added/removed lists, an unchanged one no list")


def apply_delta(tokens: list[str], added: list[str], removed: list[str]) -> list[str]:
    """Return the sorted tokens after removing `removed` (all present) and adding `added` (all absent).

    Raises Rejected (422 digest_root) when the delta does not fit the base it names.
    """
    have = set(tokens)
    if not have.issuperset(removed) or not have.isdisjoint(added):
        raise Rejected(422, "digest_root", "the delta removes tokens the base lacks or adds ones it holds")
    return sorted(have.difference(removed).union(added))


def digest_root(servers: list[str], networks: list[str]) -> str:
    """Return the digest root of two sorted lists of hex tokens.

    Written out here rather than imported, so the reference verifier checks the agent's
    `identifiers.TokenSet.root` independently: BLAKE2b-256, person "fa1-root", over each list
    as an 8-byte big-endian count followed by its raw tokens.
    """
    h = hashlib.blake2b(person=b"fa1-root", digest_size=32)
    for tokens in (servers, networks):
        h.update(len(tokens).to_bytes(8, "big"))
        h.update(bytes.fromhex("".join(tokens)))
    return h.hexdigest()


def peek(data: bytes) -> dict[str, Any] | None:
    """Return the decoded (unverified) payload object of an envelope, or None if it has none."""
    try:
        return _decode(envelope.parse_envelope(data)[1])
    except EnvelopeError:
        return None


def _decode(raw: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _public_key(payload: dict[str, Any]) -> bytes:
    body = payload.get("body")
    value = body.get("public_key") if isinstance(body, dict) else None
    try:
        key = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise Rejected(400, "bad_public_key", "license body lacks a valid public_key")
    return key
