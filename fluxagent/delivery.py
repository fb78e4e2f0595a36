"""One delivery engine for `run`, `run --once` and `demo`: produce → spool → send → ledger.

Messages are built by `collect` (the code `preview` uses), sealed with a seq persisted first,
spooled durably, then sent oldest first. Receipts are verified by `receipts.classify`; what
left the machine is appended to the ledger. Time, randomness and the transport come in as
arguments, so tests drive days of outage in milliseconds.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fluxagent import collect
from fluxagent.config import Config
from fluxagent.errors import EXIT_CHECK_FAILED, AllowlistError, FluxError, SchemaHeld, StateError
from fluxagent.identifiers import TokenSet, key_id
from fluxagent.kinds import LICENSE_STATES, SCHEDULED
from fluxagent.license import record as license_store
from fluxagent.license import state as licensing
from fluxagent.license.state import Contact, Receipt, Status
from fluxagent.schema import approval as schema_approval
from fluxagent.schema.policy import Policy
from fluxagent.schema.record import note_policy
from fluxagent.statedir import digestset, state
from fluxagent.statedir.identity import Identity
from fluxagent.statedir.ledger import Ledger
from fluxagent.statedir.spool import Entry, Spool, SpoolFull, TooBig
from fluxagent.timefmt import utc_stamp
from fluxagent.transport import Body, Transport, send
from fluxagent.wire import messages
from fluxagent.wire.http import HttpResponse, TransportError
from fluxagent.wire.messages import Message, Sealed, ledger_summary
from fluxagent.wire.receipts import Delivered, Rejected, Retry, classify

BACKOFF_BASE = 30.0
BACKOFF_CAP = 3600.0
RETRY_AFTER_CAP = 6 * 3600.0
# No retry time this clock sets lies further ahead: one that does was set while the clock ran ahead.
MAX_RETRY_WAIT = max(BACKOFF_CAP, RETRY_AFTER_CAP)
# A Retry-After shorter than this ("0", a date in the past) is no guidance: back off instead, or a
# server answering 429 + "Retry-After: 0" forever would have the daemon retry in a tight loop.
RETRY_AFTER_FLOOR = 1.0
# A server may lengthen an interval, up to this: a receipt cannot silence the agent for good.
SERVER_INTERVAL_CAP = 30 * 86400
SKEW_LIMIT = licensing.SKEW_LIMIT
CONFIG_ERROR_RETRY = 900.0  # an untrusted server certificate: retried this rarely until the config is fixed
OUTAGE_SUMMARY_EVERY = 6 * 3600.0  # one warning when an outage starts, then a summary this often
LICENSE_STATUS_FILE = license_store.FILE
SPOOL_ENTRY_OVERHEAD = 512  # the spool entry's own fields around the envelope
# need_full or a refused delta make the next digest full, at most this long after the last full one:
# a server answering need_full to everything gets a full digest an hour, not one per answer
FULL_DIGEST_PACE = 3600

# Event names per kind, written out so that grep finds each one.
SENT_EVENT = {"license": "license.sent", "heartbeat": "heartbeat.sent", "digest": "digest.sent",
              "credentials": "credentials.sent"}
SPOOLED_EVENT = {"license": "license.spooled", "heartbeat": "heartbeat.spooled", "digest": "digest.spooled",
                 "credentials": "credentials.spooled"}
SKIPPED_EVENT = {"license": "license.identifiers_skipped", "heartbeat": "heartbeat.identifiers_skipped",
                 "digest": "digest.identifiers_skipped", "credentials": "credentials.identifiers_skipped"}
NOT_SENT_EVENT = {"license": "license.not_sent", "heartbeat": "heartbeat.not_sent", "digest": "digest.not_sent",
                  "credentials": "credentials.not_sent"}
REJECTED_EVENT = {"license": "license.rejected", "heartbeat": "heartbeat.rejected", "digest": "digest.rejected",
                  "credentials": "credentials.rejected"}
RECOVERED_EVENT = {"license": "license.source_recovered", "heartbeat": "heartbeat.source_recovered",
                   "digest": "digest.source_recovered", "credentials": "credentials.source_recovered"}

def interval_of(cfg: Config, kind: str) -> float:
    """Return the configured interval of a scheduled kind, in seconds."""
    return cfg.schedule.interval(kind)


def next_due(now: float, interval: float, jitter: float, rng: random.Random) -> int:
    """Return the next due time: now + interval + uniform(0, jitter)."""
    return int(now + interval + rng.uniform(0, jitter))


def backoff(failures: int, rng: random.Random, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Return a full-jitter exponential backoff delay: uniform(0, min(cap, base·2ⁿ))."""
    return rng.uniform(0, min(cap, base * 2 ** min(failures, 30)))


def sealed_of(entry: Entry) -> Sealed:
    """Return what `classify` checks a receipt against: kind, payload hash, iid and nonce of the entry.

    A digest's payload is not read back (it can be tens of MB; the ledger keeps its summary), the
    payload of any other kind is (the ledger keeps it).
    """
    obj = {"iid": entry.iid, "nonce": entry.nonce, "seq": entry.seq}
    payload = b"" if entry.summary is not None else entry.payload
    return Sealed(entry.kind, entry.endpoint, payload, obj, b"", summary=entry.summary, sha256=entry.payload_sha256)


def digest_root_of(sealed: Sealed) -> str | None:
    """Return the root a sealed digest carries (from its summary, else its payload object)."""
    root = (sealed.summary or {}).get("root")
    if root is None:
        body = sealed.obj.get("body")
        root = body.get("root") if isinstance(body, dict) else None
    return root if isinstance(root, str) else None


@dataclass
class Deps:
    """The outside world of the engine."""

    transport: Transport
    clock: Callable[[], float]
    rng: random.Random = field(default_factory=random.Random)
    nonce: Callable[[int], bytes] = field(default_factory=lambda: random.SystemRandom().randbytes)
    world: collect.World = field(default_factory=collect.World)
    log: Any = None
    # what the operator approved to be sent, read before each produce (tests pass their own versions)
    approval: Callable[[Config], Policy] = schema_approval.load_policy


@dataclass
class FlushResult:
    """What one flush did."""

    delivered: list[tuple[Entry, Delivered]] = field(default_factory=list)
    rejected: list[tuple[Entry, Rejected]] = field(default_factory=list)
    retry: Retry | None = None


class Engine:
    """Owns the spool, ledger, seq and schedule of one state directory (under the daemon's lock)."""

    def __init__(self, cfg: Config, ident: Identity, deps: Deps) -> None:
        self._cfg, self._ident, self._deps = cfg, ident, deps
        sd = cfg.instance.state_dir
        self._spool = Spool(sd / "spool", cfg.spool.max_messages, cfg.spool.max_bytes)
        self._ledger = Ledger(sd / "ledger")
        self._seq = state.Seq(sd)
        self._schedule = state.load_schedule(sd)
        self._clamp_schedule(deps.clock())
        # persisted: each event runs in a worker process of its own, and backoff and the outage
        # bookkeeping (one warning per outage, then summaries) must carry over from one to the next
        held = state.load_backoff(sd)
        self._failures = held.failures
        # the server's Retry-After outlives the process that heard it (a restart, the next run --once);
        # one further ahead than any Retry-After we accept was heard with the clock ahead: ignored
        self._server_wait = state.load_retry_after(sd)
        self._retry_at: float = max(held.retry_at, self._server_wait)
        self._retry_time(deps.clock())
        self._outage_since: float | None = held.outage_since
        self._outage_summary_at: float = held.outage_summary_at
        self._last_skew: float = 0.0
        self._source_exit: dict[str, int] = {}  # the exit code of each failing kind's error (run --once)
        self._source_state = state.load_source_errors(sd)  # persisted for `status`
        # a kind held back for a schema approval stays so until the operator acts: said once, not by
        # every later run or restart (a failing source, which may recover by itself, is said again)
        self._source_errors: dict[str, str] = {
            k: str(v.get("error")) for k, v in self._source_state.items() if v.get("code") == SchemaHeld.code}
        self._policy: Policy | None = None
        self._policy_error: str | None = None
        now = int(deps.clock())
        for e in self._spool.opened.superseded:
            self.record_entry(now, "superseded", e, outcome="superseded", detail="replaced while unsent")
        for e in self._spool.opened.dropped:
            self.record_entry(now, "dropped", e, outcome="dropped", detail="spool bound")
        self._debug_proxy()
        self._log("agent.state_opened", spool=self._spool.depth(), torn_ledger_bytes=self._ledger.torn_bytes,
                  quarantined=len(self._spool.opened.quarantined), schedule_reset=self._schedule.reset_reason)

    # ---- what the shell may read ----

    @property
    def config(self) -> Config:
        """The configuration in force (replaced by reconfigure)."""
        return self._cfg

    @property
    def identity(self) -> Identity:
        """The instance identity whose keys seal every message."""
        return self._ident

    @property
    def deps(self) -> Deps:
        """The outside world the engine was given (transport, clock, randomness, sources, log)."""
        return self._deps

    @property
    def spool(self) -> Spool:
        """The durable queue of sealed, unsent messages."""
        return self._spool

    @property
    def ledger(self) -> Ledger:
        """The hash-chained record of what left the machine (read it; write through record*)."""
        return self._ledger

    @property
    def schedule(self) -> state.Schedule:
        """The persisted timers of the scheduled kinds."""
        return self._schedule

    @property
    def retry_at(self) -> float:
        """When the spool may next be flushed after a retryable failure (0: now)."""
        return self._retry_time(self._deps.clock())

    def _retry_time(self, now: float) -> float:
        """Return retry_at; a wait further ahead of now than any this engine sets is dropped (clock jump)."""
        if self._retry_at > now + MAX_RETRY_WAIT:
            self._retry_at = 0.0  # else a backoff begun with the clock a year ahead holds sending back a year
        if self._server_wait > now + MAX_RETRY_WAIT:
            self._server_wait = 0.0
        return self._retry_at

    @property
    def outage_since(self) -> float | None:
        """When the current outage began, or None while the server answers."""
        return self._outage_since

    @property
    def source_exit_codes(self) -> list[int]:
        """The exit code of each kind that could not be built or queued in the last produce."""
        return [self._source_exit[k] for k in self._source_errors if k in self._source_exit]

    @property
    def source_errors(self) -> dict[str, str]:
        """The kinds not sent because their source fails, with why (a copy)."""
        return dict(self._source_errors)

    @property
    def source_status(self) -> dict[str, dict[str, Any]]:
        """Why each kind is not being sent, as persisted for `status` (a copy)."""
        return dict(self._source_state)

    def make_due(self, kind: str, now: float) -> None:
        """Make a scheduled kind due at now (a license file replaced by hand, an operator's request)."""
        ks = self._schedule.kind(kind)
        self._schedule = self._schedule.with_kind(kind, replace(ks, next_due=int(now)))
        self._save_schedule()

    # ---- small helpers ----

    def _emit(self, level: str, event: str, kw: dict[str, Any]) -> None:
        if self._deps.log is not None:
            getattr(self._deps.log, level)(event, **{k: v for k, v in kw.items() if v is not None})

    def _log(self, event: str, **kw: Any) -> None:
        self._emit("info", event, kw)

    def _debug(self, event: str, **kw: Any) -> None:
        self._emit("debug", event, kw)

    def _warn(self, event: str, **kw: Any) -> None:
        self._emit("warning", event, kw)

    def _error(self, event: str, **kw: Any) -> None:
        self._emit("error", event, kw)

    def record(self, now: float, event: str, kind: str, *, endpoint: str, seq: int, payload: bytes | None,
               outcome: str, http_status: int | None = None, receipt_sha256: str | None = None,
               detail: str | None = None, payload_sha256: str | None = None,
               summary: dict[str, Any] | None = None) -> None:
        """Append one entry to the ledger; raises StateError.

        A digest is recorded by its payload hash and list sizes (`summary`), never its lists: they
        would make ledger lines of tens of MB. Given a digest payload, record() summarizes it.
        """
        if kind == "digest" and payload is not None and summary is None:
            summary, payload_sha256, payload = ledger_summary(payload), hashlib.sha256(payload).hexdigest(), None
        self._ledger.append(now=int(now), event=event, kind=kind, outcome=outcome, endpoint=endpoint, seq=seq,
                            payload=payload, payload_sha256=payload_sha256, summary=summary,
                            http_status=http_status, receipt_sha256=receipt_sha256, detail=detail)

    def record_entry(self, now: int, event: str, e: Entry, *, outcome: str, http_status: int | None = None,
                     receipt_sha256: str | None = None, detail: str | None = None) -> None:
        """Ledger a spooled (or exported) entry: a digest by its hash and summary, never read back."""
        self.record(now, event, e.kind, endpoint=e.endpoint, seq=e.seq,
                    payload=None if e.summary is not None else e.payload, payload_sha256=e.payload_sha256,
                    summary=e.summary, outcome=outcome, http_status=http_status, receipt_sha256=receipt_sha256,
                    detail=detail)

    def _note_source(self, kind: str, entry: dict[str, Any] | None) -> None:
        """Record (or clear) why kind is not being sent, where `status` reads it."""
        old = self._source_state.get(kind)
        if entry is None:
            self._source_state.pop(kind, None)
        else:
            if old and old.get("code") == entry["code"]:
                entry = {**entry, "since": old.get("since", entry["since"])}  # the same outage goes on
            self._source_state[kind] = entry
        state.save_source_errors(self._cfg.instance.state_dir, self._source_state)

    def _save_schedule(self) -> None:
        state.save_schedule(self._cfg.instance.state_dir, self._schedule)

    def _clamp_schedule(self, now: float) -> None:
        """Make timers that lie impossibly far ahead (set while the clock ran ahead) due now; save if any."""
        self._schedule, clamped = state.clamp_schedule(self._schedule, now, self._cfg.schedule.spans())
        if clamped:
            self._warn("schedule.clamped", kinds=clamped,
                       reason="a timer lay further ahead than any run sets one: the clock ran ahead")
            self._save_schedule()

    def due(self, now: float) -> list[str]:
        """Return the scheduled kinds whose timer has expired (never scheduled counts as due)."""
        self._clamp_schedule(now)  # the clock can jump back under a running daemon too
        due = [k for k in SCHEDULED if (self._schedule.kind(k).next_due or 0) <= now]
        self._debug("schedule.due", due=due, next_in={
            k: int((self._schedule.kind(k).next_due or now) - now) for k in SCHEDULED if k not in due})
        return due

    def next_wake(self, now: float) -> float:
        """Return when the loop must wake next: the earliest timer, or the retry time of a non-empty spool."""
        self._clamp_schedule(now)
        t = min(float(self._schedule.kind(k).next_due or now) for k in SCHEDULED)
        if self._spool.depth():
            t = min(t, max(self._retry_time(now), now))
        return t

    # ---- produce ----

    def produce(self, kinds: Sequence[str], now: float, *, force_full: bool = False) -> list[Sealed]:
        """Build, seal (seq persisted first) and spool kinds; a failing source skips its kind. Returns sealed."""
        if "license" in kinds and self._schedule.license.last_sent is None and self._spool.holds("license"):
            # The first license registers the instance, and a superseding one would queue behind the
            # heartbeats already waiting (seq order), which an unregistered instance cannot deliver.
            kinds = [k for k in kinds if k != "license"]
            self._advance("license", now)
            self._log("license.registration_pending", spool=self._spool.depth())
        if "digest" in kinds and (wait := self._full_digest_paced(now)) is not None:
            # `run --once` asks for every kind: a full digest the server asked for still waits its pace
            kinds = [k for k in kinds if k != "digest"]
            self._log("digest.full_paced", due_in=wait)
        policy = self.current_policy(now)
        license_state = self.license_status(now).state if "license" in kinds else None
        acked_root = None if force_full else self._schedule.last_acked_root
        # the acknowledged set is read only when a delta may be sent (approved); else full or unchanged
        base = (lambda: self._digest_base(acked_root)) if policy.allows("digest", "base") else None
        built = collect.gather(self._cfg, self._ident, kinds, now=now, last_acked_root=acked_root,
                               license_state=license_state if license_state in LICENSE_STATES else None,
                               world=self._deps.world, base=base, policy=policy)
        out: list[Sealed] = []
        for b in built:
            if b.skipped:
                self._log(SKIPPED_EVENT[b.kind], **dict(b.skipped))
            if b.message is None:
                err = b.error.message if b.error else "not built"
                code = b.error.code if b.error else "error"
                if (self._source_state.get(b.kind) or {}).get("error") != err:  # once per streak, not hourly
                    self._warn(NOT_SENT_EVENT[b.kind], reason=err, code=code)
                    self._note_source(b.kind, {"error": err, "code": code, "since": int(now)})
                self._source_errors[b.kind] = err
                self._source_exit[b.kind] = b.error.exit_code if b.error else EXIT_CHECK_FAILED
                self._advance(b.kind, now)  # a failing source is tried again next interval
                continue
            sealed = self._seal_into_spool(b.kind, b.message, now)
            if sealed is None:
                self._advance(b.kind, now)  # not rebuilt before its next interval: no rescan loop
                continue
            self._source_errors.pop(b.kind, None)
            if b.kind in self._source_state:
                self._log(RECOVERED_EVENT[b.kind])
                self._note_source(b.kind, None)
            seq = sealed.obj["seq"]
            if b.tokens is not None and sealed.summary is not None:
                self._store_pending(b.tokens, sealed.summary)
                if sealed.summary.get("full"):
                    self._schedule = replace(self._schedule, last_full_at=int(now))
            b.tokens = None  # a million tokens are 16 MB: let them go once stored
            put = self._spool.put(sealed, int(now))
            for e in put.superseded:
                self.record_entry(int(now), "superseded", e, outcome="superseded", detail=f"by seq {seq}")
            for e in put.dropped:
                self.record_entry(int(now), "dropped", e, outcome="dropped", detail="spool bound")
                self._warn("spool.dropped_oldest_heartbeat", seq=e.seq)
            if put.counters_error:  # the message is queued; only the drop/supersede counts were not saved
                self._warn("spool.counters_unsaved", error=put.counters_error)
            # only now: a seq or spool write that failed (disk full) leaves the kind due, retried soon
            self._advance(b.kind, now)
            self._log(SPOOLED_EVENT[b.kind], seq=seq, bytes=sealed.envelope_size)
            out.append(sealed)
        self._save_schedule()
        return out

    def _seal_into_spool(self, kind: str, message: messages.Message, now: float) -> Sealed | None:
        """Seal message with the next seq once it is sure to fit the spool; else report why, return None.

        The seq is reserved only after the check, so a message that cannot be queued burns none.
        """
        floor = max(self._spool.max_seq(), self._ledger.max_seq())
        nonce = self._deps.nonce(16)

        def seal(seq: int) -> Sealed:
            return messages.seal(message, signing_key=self._ident.signing_key, iid=self._ident.instance_id,
                                 aud=self._cfg.server.audience, seq=seq, now=int(now), nonce=nonce,
                                 fields=self._policy.allowed if self._policy is not None else None)

        try:
            sealed = seal(self._seq.peek(floor))
            self._spool.check_room(kind, sealed.envelope_size + SPOOL_ENTRY_OVERHEAD)
        except (AllowlistError, SpoolFull) as exc:
            if (self._source_state.get(kind) or {}).get("code") != exc.code:  # once, not every interval
                event = "digest.too_big_for_spool" if isinstance(exc, TooBig) else NOT_SENT_EVENT[kind]
                self._warn(event, reason=exc.message, code=exc.code, hint=exc.hint)
                self._note_source(kind, {"error": exc.message, "code": exc.code, "since": int(now)})
            self._source_errors[kind] = exc.message
            self._source_exit[kind] = exc.exit_code
            return None
        seq = self._seq.reserve(floor=floor)
        if self._seq.recovered:
            self._warn("seq.recovered", detail=self._seq.recovered)
            self._seq.recovered = None
        return sealed if seq == sealed.obj["seq"] else seal(seq)

    @property
    def policy(self) -> Policy | None:
        """What may be sent, as last read (None before the first produce)."""
        return self._policy

    def current_policy(self, now: float) -> Policy:
        """Return what may be sent, re-reading the approval (so an approval takes effect without a restart).

        The first read raises ConfigError (78) when the approval is missing or bad; a later failure keeps
        the last good approval and is logged once. A new approval is written to the ledger once.
        """
        try:
            policy = self._deps.approval(self._cfg)
        except FluxError as exc:
            if self._policy is None:
                raise
            if self._policy_error != exc.message:
                self._error("schema.approval_unreadable", error=exc.message, keeping=self._policy.approved.name)
                self._policy_error = exc.message
            return self._policy
        self._policy_error = None
        old, self._policy = self._policy, policy
        if old is None or old.approved != policy.approved or old.running != policy.running:
            note_policy(self._cfg.instance.state_dir, self._ledger, policy, int(now), self._log, self._warn)
        return policy

    def _digest_base(self, acked_root: str | None) -> TokenSet | None:
        """Return the acknowledged token set when it is that of acked_root under this digest key, else None."""
        if acked_root is None:
            return None
        found = digestset.acked(self._cfg.instance.state_dir)
        if found is None or found.root != acked_root or found.key_id != key_id(self._ident.digest_key):
            return None  # missing, corrupt, another root or another key: full, never a wrong delta
        return found.tokens

    def _store_pending(self, tokens: TokenSet, summary: dict[str, Any]) -> None:
        """Keep the token set of the digest about to be spooled, to become the base once acknowledged."""
        if summary.get("root") == self._schedule.last_acked_root:
            return  # unchanged: the acknowledged set is this one already
        try:
            digestset.write_pending(self._cfg.instance.state_dir, str(summary["key_id"]), str(summary["root"]),
                                    tokens)
        except OSError as exc:
            raise StateError(f"cannot store the digest token set in {self._cfg.instance.state_dir}:"
                             f" {exc.strerror or exc}; the message was not queued",
                             hint="check free space and permissions of the state directory") from exc

    def _full_digest_next(self, now: float, why: str) -> None:
        """Make the next digest full (no base), due at most once per FULL_DIGEST_PACE: never a loop."""
        try:
            digestset.forget(self._cfg.instance.state_dir)
        except OSError as exc:
            raise StateError(f"cannot remove the acknowledged digest set: {exc.strerror or exc}") from exc
        last = self._schedule.last_full_at
        due = int(now) if last is None else max(int(now), last + FULL_DIGEST_PACE)
        ks = self._schedule.digest
        self._schedule = replace(self._schedule.with_kind("digest", replace(ks, next_due=due)), last_acked_root=None)
        self._log("digest.full_requested", reason=why, due_in=int(due - now))
        self._save_schedule()

    def _full_digest_paced(self, now: float) -> int | None:
        """Return the seconds a full digest must still wait (need_full or a refused delta made the next
        one full, and the last full one is under FULL_DIGEST_PACE old), else None."""
        s = self._schedule
        if s.last_acked_root is not None or s.last_full_at is None or (s.digest.next_due or 0) <= now:
            return None
        left = s.last_full_at + FULL_DIGEST_PACE - now
        return int(left) + 1 if 0 < left <= FULL_DIGEST_PACE else None  # a clock set back paces nothing

    def _acknowledge_digest(self, root: str | None) -> None:
        """Keep the token set of an acknowledged root as the next delta's base (else none: full next)."""
        try:
            if root is not None and root != self._schedule.last_acked_root:  # unchanged: the set stays
                digestset.acknowledge(self._cfg.instance.state_dir, root)
        except OSError as exc:
            raise StateError(f"cannot store the acknowledged digest set: {exc.strerror or exc}") from exc

    def _advance(self, kind: str, now: float) -> None:
        """Set the next due time of a scheduled kind after it was produced (or its source failed)."""
        if kind in SCHEDULED:
            due = next_due(now, interval_of(self._cfg, kind), self._cfg.schedule.jitter, self._deps.rng)
            self._schedule = self._schedule.with_kind(kind, replace(self._schedule.kind(kind), next_due=due))
            self._debug("schedule.next_due", kind=kind, next_in=int(due - now),
                        interval=int(interval_of(self._cfg, kind)))

    # ---- send ----

    def _send(self, url: str, body: Body) -> HttpResponse | TransportError:
        """Post body to url through the transport within the request deadline; log status and time (debug)."""
        start = time.perf_counter()
        response = send(self._deps.transport, url, body, deadline=self._cfg.server.request_deadline)
        ms = round((time.perf_counter() - start) * 1000, 1)
        endpoint = url[len(self._cfg.server.url):] if url.startswith(self._cfg.server.url) else "?"
        if isinstance(response, TransportError):
            self._debug("http.failed", endpoint=endpoint, kind=response.kind, ms=ms)
        else:
            self._debug("http.response", endpoint=endpoint, status=response.status, bytes=len(response.body), ms=ms)
        return response

    def _debug_proxy(self) -> None:
        """Log the proxy the transport uses (debug), password redacted."""
        self._debug("http.proxy", proxy=getattr(self._deps.transport, "proxy", None) or "none")

    def reconfigure(self, cfg: Config, transport: Transport) -> None:
        """Take a reloaded config (same state dir) and its transport."""
        self._cfg = cfg
        self._deps.transport = transport
        self._debug_proxy()
        self._spool.max_messages, self._spool.max_bytes = cfg.spool.max_messages, cfg.spool.max_bytes

    def flush(self, now_fn: Callable[[], float] | None = None, *,
              should_stop: Callable[[], bool] = lambda: False) -> FlushResult:
        """Send spooled messages oldest first until one must be retried or should_stop(); ledger every outcome."""
        clock = now_fn or self._deps.clock
        result = FlushResult()
        for entry in self._spool.entries():
            if should_stop():
                return result
            sealed = sealed_of(entry)
            url = self._cfg.server.url + entry.endpoint
            response = self._send(url, entry.body())
            now = clock()
            outcome = classify(sealed, response, self._cfg.server.vendor_keys, now, RETRY_AFTER_CAP)
            if isinstance(outcome, Retry):
                if outcome.sent:  # the request may have left the machine: the ledger says so
                    self.record_entry(int(now), "attempt", entry, outcome="retry", http_status=outcome.status,
                                      detail=outcome.reason)
                self._on_retry(entry, outcome, now)
                result.retry = outcome
                return result
            if isinstance(outcome, Rejected):
                self.record_entry(int(now), "rejected", entry, outcome="rejected", http_status=outcome.status,
                                  detail=outcome.reason)
                self._spool.remove(entry)
                self._error(REJECTED_EVENT[entry.kind], seq=entry.seq, status=outcome.status, reason=outcome.reason)
                if entry.kind == "license":
                    why = f"HTTP {outcome.status}: {outcome.reason}"[:200]
                    self.refresh_license(now, Contact("rejected", now, now, why))
                if entry.kind == "digest" and (entry.summary or {}).get("base"):
                    self._full_digest_next(now, f"the server refused a delta: {outcome.reason}"[:200])
                result.rejected.append((entry, outcome))
                continue
            self._ledger_delivered(sealed, outcome, now, event="sent")
            self._spool.remove(entry)
            self._apply_receipt(sealed, outcome, now, source="online")
            result.delivered.append((entry, outcome))
        if self._outage_since is not None:
            self._log("delivery.recovered", outage_seconds=int(clock() - self._outage_since), attempts=self._failures)
        if self._failures or self._retry_at or self._outage_since is not None:
            self._failures, self._retry_at, self._outage_since = 0, 0.0, None
            self._save_backoff()
        if self._server_wait:
            self._server_wait = 0.0
            state.save_retry_after(self._cfg.instance.state_dir, 0.0)
        return result

    def _save_backoff(self) -> None:
        state.save_backoff(self._cfg.instance.state_dir, state.Backoff(
            self._failures, self._retry_at, self._outage_since, self._outage_summary_at))

    def _on_retry(self, entry: Entry, outcome: Retry, now: float) -> None:
        self._failures += 1
        after = outcome.after
        asked = after is not None and after >= RETRY_AFTER_FLOOR
        delay = after if after is not None and asked else backoff(self._failures, self._deps.rng)
        if outcome.config:  # a person must fix the setup: try again slowly, not on the outage schedule
            delay = max(delay, CONFIG_ERROR_RETRY)
        self._retry_at = now + delay
        if asked or self._server_wait:
            self._server_wait = self._retry_at if asked else 0.0
            state.save_retry_after(self._cfg.instance.state_dir, self._server_wait)
        ks = self._schedule.kind(entry.kind) if entry.kind in SCHEDULED else None
        if ks is not None:
            self._schedule = self._schedule.with_kind(entry.kind, replace(
                ks, consecutive_failures=ks.consecutive_failures + 1, last_error=outcome.reason[:200]))
            self._save_schedule()
        if self._outage_since is None:
            self._outage_since = self._outage_summary_at = now
            if outcome.config:  # said once, as an error: retrying cannot fix it
                self._error("delivery.config_error", reason=outcome.reason, retry_in=int(delay),
                            spool=self._spool.depth(),
                            hint="set server.ca_bundle to the CA that issued the server's certificate")
            else:
                self._warn("delivery.outage_started", reason=outcome.reason, retry_in=int(delay),
                           spool=self._spool.depth())
        elif now - self._outage_summary_at >= OUTAGE_SUMMARY_EVERY:  # quiet: a summary, not every attempt
            self._outage_summary_at = now
            self._warn("delivery.outage_continues", attempts=self._failures, seconds=int(now - self._outage_since),
                       spool=self._spool.depth(), reason=outcome.reason)
        self._save_backoff()
        self.refresh_license(now, Contact("unreachable", now, self._outage_since, outcome.reason[:200]))

    def record_delivery(self, sealed: Sealed, d: Delivered, now: float, *, source: str = "online",
                        event: str = "sent", detail: str | None = None) -> None:
        """Ledger a verified receipt for sealed and apply what it says (schedule, digest root, license state).

        The one path by which a delivery is recorded: spooled messages, on-demand requests and receipts
        imported from an air-gapped answer (source "import") all go through it. Raises StateError.
        """
        self._ledger_delivered(sealed, d, now, event=event, detail=detail)
        self._apply_receipt(sealed, d, now, source=source)

    def request(self, message: Message, *, describe: Callable[[Delivered], str] | None = None
                ) -> tuple[Sealed, Delivered | Rejected | Retry]:
        """Seal an on-demand message after the spool (seq order), send it once and ledger the outcome.

        describe(d) gives the ledger detail of a delivery; a FluxError it raises (an unusable receipt) is
        ledgered and re-raised. Returns the sealed message and the classified answer; raises StateError.
        """
        seq = self._seq.reserve(floor=max(self._spool.max_seq(), self._ledger.max_seq()))
        sealed = messages.seal(message, signing_key=self._ident.signing_key, iid=self._ident.instance_id,
                               aud=self._cfg.server.audience, seq=seq, now=int(self._deps.clock()),
                               nonce=self._deps.nonce(16))
        response = self._send(self._cfg.server.url + sealed.endpoint, sealed.envelope)
        now = self._deps.clock()
        outcome = classify(sealed, response, self._cfg.server.vendor_keys, now, RETRY_AFTER_CAP)
        if isinstance(outcome, Delivered):
            try:
                detail = describe(outcome) if describe else None
            except FluxError as exc:
                self.record(now, "rejected", sealed.kind, endpoint=sealed.endpoint, seq=seq, payload=sealed.payload,
                            outcome="rejected", http_status=outcome.status, receipt_sha256=outcome.receipt_sha256,
                            detail=f"unusable receipt: {exc.message}"[:300])
                raise
            self.record_delivery(sealed, outcome, now, detail=detail)
        elif isinstance(outcome, Rejected):
            self.record(now, "rejected", sealed.kind, endpoint=sealed.endpoint, seq=seq, payload=sealed.payload,
                        outcome="rejected", http_status=outcome.status, detail=outcome.reason)
        else:
            self.record(now, "failed", sealed.kind, endpoint=sealed.endpoint, seq=seq, payload=sealed.payload,
                        outcome="failed", http_status=outcome.status, detail=outcome.reason)
        return sealed, outcome

    def _ledger_delivered(self, sealed: Sealed, d: Delivered, now: float, *, event: str,
                          detail: str | None = None) -> None:
        digest = sealed.summary is not None
        self.record(now, event, sealed.kind, endpoint=sealed.endpoint, seq=int(sealed.obj["seq"]),
                    payload=None if digest else sealed.payload,
                    payload_sha256=sealed.payload_sha256 if digest else None, summary=sealed.summary,
                    outcome="delivered", http_status=d.status, receipt_sha256=d.receipt_sha256, detail=detail)

    def _apply_receipt(self, sealed: Sealed, d: Delivered, now: float, *, source: str) -> None:
        kind = sealed.kind
        if source == "online":
            self._last_skew = d.skew
            if abs(d.skew) > SKEW_LIMIT:
                self._warn("clock.skew", seconds=int(d.skew))
        shown = None if source == "online" else source  # online deliveries log as they always did
        self._log(SENT_EVENT[kind], seq=sealed.obj["seq"], status=d.status, source=shown)
        if kind not in SCHEDULED:
            return
        ks = self._schedule.kind(kind)
        due = ks.next_due
        hint = d.receipt_body.get("next_check_in" if kind == "license" else "next_in")
        asked = min(hint, SERVER_INTERVAL_CAP) if isinstance(hint, int) and hint > 0 else None
        if asked is not None and due is not None:
            due = max(due, int(now + asked))  # a server can only lengthen it
        self._schedule = self._schedule.with_kind(kind, replace(
            ks, last_sent=int(now), next_due=due, consecutive_failures=0, last_error=None, server_interval=asked))
        if kind == "digest":
            if d.receipt_body.get("need_full"):
                self._full_digest_next(now, "the server asked for a full digest (need_full)")
            else:
                root = digest_root_of(sealed)
                self._acknowledge_digest(root)
                self._schedule = replace(self._schedule, last_acked_root=root)
        if kind == "license":
            self.write_license_status(d, now, source=source)
        else:
            self.refresh_license(now, Contact("delivered", now) if source == "online" else None)
        self._save_schedule()

    # ---- license status (the platform reads it) ----

    def read_license_status(self) -> dict[str, Any]:
        """Return license-status.json, or {} when absent or unreadable."""
        try:
            return state.read_json(self._cfg.instance.state_dir / LICENSE_STATUS_FILE) or {}
        except StateError:
            return {}

    def write_license_status(self, d: Delivered, now: float, *, source: str = "online") -> Status:
        """Record a verified license receipt (online, or imported) and write the state derived from it.

        The single entry point through which a license receipt reaches license-status.json.
        """
        b = d.receipt_body

        def opt_int(v: Any) -> int | None:
            return v if isinstance(v, int) and not isinstance(v, bool) else None

        lid = b.get("license_id")
        receipt = Receipt(str(b.get("state")), lid if isinstance(lid, str) else None, opt_int(b.get("expires_at")),
                          opt_int(b.get("grace_until")), opt_int(b.get("next_check_in")), d.server_ts, now,
                          d.skew if source == "online" else 0.0, source)
        contact = Contact("delivered", now) if source == "online" else None
        st, _file, _ = license_store.refresh(self._cfg, now, receipt=receipt, contact=contact,
                                             read=self._deps.world.read_license)
        self._log("license.state", state=st.state, clock_skew=st.clock_skew or None)
        return st

    def refresh_license(self, now: float, contact: Contact | None = None) -> Status:
        """Derive the license state now (recording contact if given); rewrite license-status.json on change.

        When the license file changed its verdict, the license check is made due at once.
        """
        before = (self.read_license_status().get("file") or {})
        st, file, written = license_store.refresh(self._cfg, now, contact=contact, read=self._deps.world.read_license)
        if written:
            self._log("license.state", state=st.state, clock_skew=st.clock_skew or None)
            if before and (before.get("license_id"), before.get("state")) != (file.license_id, file.state):
                self._log("license.file_changed", state=file.state)
                self.make_due("license", now)
        return st

    def license_status(self, now: float) -> Status:
        """Return the license state derived now, without writing anything."""
        return license_store.current(self._cfg, now, read=self._deps.world.read_license)[0]

    def cycle(self, now: float, kinds: Sequence[str]) -> FlushResult:
        """Produce kinds and flush the spool: one full cycle. Raises FluxError on state trouble.

        While the server's Retry-After lasts, nothing is sent: the result says to retry then.
        """
        self.produce(kinds, now)
        self._retry_time(now)  # drops a wait heard with the clock ahead
        if self._server_wait > now:
            until = utc_stamp(self._server_wait)
            self._log("delivery.waiting", until=until, retry_in=int(self._server_wait - now),
                      spool=self._spool.depth())
            return FlushResult(retry=Retry(self._server_wait - now, f"retry_after: the server asked to wait until"
                                           f" {until}", None, sent=False))
        result = self.flush()
        now = self._deps.clock()
        if "digest" in self.due(now) and any(e.kind == "digest" for e, _ in result.delivered + result.rejected):
            self.produce(["digest"], now, force_full=True)  # the server asked for the lists (paced)
            more = self.flush()
            result.delivered += more.delivered
            result.rejected += more.rejected
            result.retry = more.retry
        return result


__all__ = ["Deps", "Engine", "FlushResult", "FluxError", "backoff", "next_due"]
