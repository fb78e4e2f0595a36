"""One delivery engine for `run`, `run --once` and `demo`: produce → spool → send → ledger.

Messages are built by `collect` (the code `preview` uses), sealed with a seq persisted first,
spooled durably, then sent oldest first. Receipts are verified by `receipts.classify`; what
left the machine is appended to the ledger. Time, randomness and the transport come in as
arguments, so tests drive days of outage in milliseconds.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fluxagent import collect
from fluxagent.config import Config
from fluxagent.errors import FluxError, SchemaHeld, StateError
from fluxagent.license import record as license_store
from fluxagent.license import state as licensing
from fluxagent.license.state import Contact, Receipt, Status
from fluxagent.schema import approval as schema_approval
from fluxagent.schema.policy import Policy
from fluxagent.schema.record import note_policy
from fluxagent.statedir import state
from fluxagent.statedir.identity import Identity
from fluxagent.statedir.ledger import Ledger
from fluxagent.statedir.spool import Entry, Spool
from fluxagent.transport import Transport, send
from fluxagent.wire import messages
from fluxagent.wire.messages import Sealed
from fluxagent.wire.receipts import Delivered, Rejected, Retry, classify

SCHEDULED = ("license", "heartbeat", "digest")
BACKOFF_BASE = 30.0
BACKOFF_CAP = 3600.0
RETRY_AFTER_CAP = 6 * 3600.0
# A Retry-After shorter than this ("0", a date in the past) is no guidance: back off instead, or a
# server answering 429 + "Retry-After: 0" forever would have the daemon retry in a tight loop.
RETRY_AFTER_FLOOR = 1.0
# A server may lengthen an interval, up to this: a receipt cannot silence the agent for good.
SERVER_INTERVAL_CAP = 30 * 86400
SKEW_LIMIT = licensing.SKEW_LIMIT
OUTAGE_SUMMARY_EVERY = 6 * 3600.0  # one warning when an outage starts, then a summary this often
LICENSE_STATUS_FILE = license_store.FILE


def interval_of(cfg: Config, kind: str) -> float:
    """Return the configured interval of a scheduled kind, in seconds."""
    return {"license": cfg.schedule.license_check, "heartbeat": cfg.schedule.heartbeat,
            "digest": cfg.schedule.digest}[kind]


def next_due(now: float, interval: float, jitter: float, rng: random.Random) -> int:
    """Return the next due time: now + interval + uniform(0, jitter)."""
    return int(now + interval + rng.uniform(0, jitter))


def backoff(failures: int, rng: random.Random, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Return a full-jitter exponential backoff delay: uniform(0, min(cap, base·2ⁿ))."""
    return rng.uniform(0, min(cap, base * 2 ** min(failures, 30)))


def sealed_of(entry: Entry) -> Sealed:
    """Return the Sealed view of a spool entry (what `classify` checks the receipt against)."""
    payload = entry.payload
    return Sealed(entry.kind, entry.endpoint, payload, json.loads(payload), entry.envelope)


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
        self.cfg, self.ident, self.deps = cfg, ident, deps
        sd = cfg.instance.state_dir
        self.spool = Spool(sd / "spool", cfg.spool.max_messages, cfg.spool.max_bytes)
        self.ledger = Ledger(sd / "ledger")
        self.seq = state.Seq(sd)
        self.schedule = state.load_schedule(sd)
        self.failures = 0
        self.retry_at: float = 0.0
        self.outage_since: float | None = None
        self.outage_summary_at: float = 0.0
        self.last_skew: float = 0.0
        self.source_status = state.load_source_errors(sd)  # persisted for `status`
        # a kind held back for a schema approval stays so until the operator acts: said once, not by
        # every later run or restart (a failing source, which may recover by itself, is said again)
        self.source_errors: dict[str, str] = {
            k: str(v.get("error")) for k, v in self.source_status.items() if v.get("code") == SchemaHeld.code}
        self.policy: Policy | None = None
        self.policy_error: str | None = None
        now = int(deps.clock())
        for e in self.spool.opened.superseded:
            self._ledger_entry(now, "superseded", e, outcome="superseded", detail="replaced while unsent")
        for e in self.spool.opened.dropped:
            self._ledger_entry(now, "dropped", e, outcome="dropped", detail="spool bound")
        self._log("agent.state_opened", spool=self.spool.depth(), torn_ledger_bytes=self.ledger.torn_bytes,
                  quarantined=len(self.spool.opened.quarantined), schedule_reset=self.schedule.reset_reason)

    # ---- small helpers ----

    def _emit(self, level: str, event: str, kw: dict[str, Any]) -> None:
        if self.deps.log is not None:
            getattr(self.deps.log, level)(event, **{k: v for k, v in kw.items() if v not in (None, 0, ())})

    def _log(self, event: str, **kw: Any) -> None:
        self._emit("info", event, kw)

    def _warn(self, event: str, **kw: Any) -> None:
        self._emit("warning", event, kw)

    def _error(self, event: str, **kw: Any) -> None:
        self._emit("error", event, kw)

    def _ledger_entry(self, now: int, event: str, e: Entry, *, outcome: str, http_status: int | None = None,
                      receipt_sha256: str | None = None, detail: str | None = None) -> None:
        self.ledger.append(now=now, event=event, kind=e.kind, outcome=outcome, endpoint=e.endpoint, seq=e.seq,
                           payload=e.payload, http_status=http_status, receipt_sha256=receipt_sha256,
                           detail=detail)

    def _source_status(self, kind: str, entry: dict[str, Any] | None) -> None:
        """Record (or clear) why kind is not being sent, where `status` reads it."""
        old = self.source_status.get(kind)
        if entry is None:
            self.source_status.pop(kind, None)
        else:
            if old and old.get("code") == entry["code"]:
                entry = {**entry, "since": old.get("since", entry["since"])}  # the same outage goes on
            self.source_status[kind] = entry
        state.save_source_errors(self.cfg.instance.state_dir, self.source_status)

    def _save_schedule(self) -> None:
        state.save_schedule(self.cfg.instance.state_dir, self.schedule)

    def due(self, now: float) -> list[str]:
        """Return the scheduled kinds whose timer has expired (never scheduled counts as due)."""
        return [k for k in SCHEDULED if (self.schedule.kind(k).next_due or 0) <= now]

    def next_wake(self, now: float) -> float:
        """Return when the loop must wake next: the earliest timer, or the retry time of a non-empty spool."""
        t = min(float(self.schedule.kind(k).next_due or now) for k in SCHEDULED)
        if self.spool.depth():
            t = min(t, max(self.retry_at, now))
        return t

    # ---- produce ----

    def produce(self, kinds: Sequence[str], now: float, *, force_full: bool = False) -> list[Sealed]:
        """Build, seal (seq persisted first) and spool kinds; a failing source skips its kind. Returns sealed."""
        if "license" in kinds and self.schedule.license.last_sent is None and self.spool.holds("license"):
            # The first license registers the instance, and a superseding one would queue behind the
            # heartbeats already waiting (seq order), which an unregistered instance cannot deliver.
            kinds = [k for k in kinds if k != "license"]
            self._advance("license", now)
            self._log("license.registration_pending", spool=self.spool.depth())
        policy = self.current_policy(now)
        license_state = self.license_status(now).state if "license" in kinds else None
        built = collect.gather(self.cfg, self.ident, kinds, now=now,
                               last_acked_root=None if force_full else self.schedule.last_acked_root,
                               license_state=license_state if license_state in messages.LICENSE_STATES else None,
                               world=self.deps.world, policy=policy)
        out: list[Sealed] = []
        for b in built:
            if b.skipped:
                self._log(f"{b.kind}.identifiers_skipped", **dict(b.skipped))
            if b.message is None:
                err = b.error.message if b.error else "not built"
                code = b.error.code if b.error else "error"
                if self.source_errors.get(b.kind) != err:  # log a failing source once, not every hour
                    self._warn(f"{b.kind}.not_sent", reason=err, code=code)
                    self._source_status(b.kind, {"error": err, "code": code, "since": int(now)})
                self.source_errors[b.kind] = err
                self._advance(b.kind, now)  # a failing source is tried again next interval
                continue
            if self.source_errors.pop(b.kind, None):
                self._log(f"{b.kind}.source_recovered")
            if b.kind in self.source_status:
                self._source_status(b.kind, None)
            seq = self.seq.reserve(floor=max(self.spool.max_seq(), self.ledger.max_seq()))
            if self.seq.recovered:
                self._warn("seq.recovered", detail=self.seq.recovered)
                self.seq.recovered = None
            sealed = messages.seal(b.message, signing_key=self.ident.signing_key, iid=self.ident.instance_id,
                                   aud=self.cfg.server.audience, seq=seq, now=int(now),
                                   nonce=self.deps.nonce(16), fields=policy.allowed)
            put = self.spool.put(sealed, int(now))
            for e in put.superseded:
                self._ledger_entry(int(now), "superseded", e, outcome="superseded", detail=f"by seq {seq}")
            for e in put.dropped:
                self._ledger_entry(int(now), "dropped", e, outcome="dropped", detail="spool bound")
                self._warn("spool.dropped_oldest_heartbeat", seq=e.seq)
            # only now: a seq or spool write that failed (disk full) leaves the kind due, retried soon
            self._advance(b.kind, now)
            self._log(f"{b.kind}.spooled", seq=seq, bytes=len(sealed.envelope))
            out.append(sealed)
        self._save_schedule()
        return out

    def current_policy(self, now: float) -> Policy:
        """Return what may be sent, re-reading the approval (so an approval takes effect without a restart).

        The first read raises ConfigError (78) when the approval is missing or bad; a later failure keeps
        the last good approval and is logged once. A new approval is written to the ledger once.
        """
        try:
            policy = self.deps.approval(self.cfg)
        except FluxError as exc:
            if self.policy is None:
                raise
            if self.policy_error != exc.message:
                self._error("schema.approval_unreadable", error=exc.message, keeping=self.policy.approved.name)
                self.policy_error = exc.message
            return self.policy
        self.policy_error = None
        old, self.policy = self.policy, policy
        if old is None or old.approved != policy.approved or old.running != policy.running:
            note_policy(self.cfg.instance.state_dir, self.ledger, policy, int(now), self._log, self._warn)
        return policy

    def _advance(self, kind: str, now: float) -> None:
        """Set the next due time of a scheduled kind after it was produced (or its source failed)."""
        if kind in SCHEDULED:
            due = next_due(now, interval_of(self.cfg, kind), self.cfg.schedule.jitter, self.deps.rng)
            self.schedule = self.schedule.with_kind(kind, replace(self.schedule.kind(kind), next_due=due))

    # ---- send ----

    def reconfigure(self, cfg: Config, transport: Transport) -> None:
        """Take a reloaded config (same state dir) and its transport."""
        self.cfg = cfg
        self.deps.transport = transport
        self.spool.max_messages, self.spool.max_bytes = cfg.spool.max_messages, cfg.spool.max_bytes

    def flush(self, now_fn: Callable[[], float] | None = None, *,
              should_stop: Callable[[], bool] = lambda: False) -> FlushResult:
        """Send spooled messages oldest first until one must be retried or should_stop(); ledger every outcome."""
        clock = now_fn or self.deps.clock
        result = FlushResult()
        deadline = self.cfg.server.connect_timeout + self.cfg.server.read_timeout + 5
        for entry in self.spool.entries():
            if should_stop():
                return result
            sealed = sealed_of(entry)
            url = self.cfg.server.url + entry.endpoint
            response = send(self.deps.transport, url, entry.envelope, deadline=deadline)
            now = clock()
            outcome = classify(sealed, response, self.cfg.server.vendor_keys, now, RETRY_AFTER_CAP)
            if isinstance(outcome, Retry):
                if outcome.sent:  # the request may have left the machine: the ledger says so
                    self._ledger_entry(int(now), "attempt", entry, outcome="retry", http_status=outcome.status,
                                       detail=outcome.reason)
                self._on_retry(entry, outcome, now)
                result.retry = outcome
                return result
            if isinstance(outcome, Rejected):
                self._ledger_entry(int(now), "rejected", entry, outcome="rejected", http_status=outcome.status,
                                   detail=outcome.reason)
                self.spool.remove(entry)
                self._error(f"{entry.kind}.rejected", seq=entry.seq, status=outcome.status,
                          reason=outcome.reason)
                if entry.kind == "license":
                    why = f"HTTP {outcome.status}: {outcome.reason}"[:200]
                    self.refresh_license(now, Contact("rejected", now, now, why))
                result.rejected.append((entry, outcome))
                continue
            self._ledger_entry(int(now), "sent", entry, outcome="delivered", http_status=outcome.status,
                               receipt_sha256=outcome.receipt_sha256)
            self.spool.remove(entry)
            self._on_delivered(entry, sealed, outcome, now)
            result.delivered.append((entry, outcome))
        if self.outage_since is not None:
            self._log("delivery.recovered", outage_seconds=int(clock() - self.outage_since), attempts=self.failures)
        self.failures, self.retry_at, self.outage_since = 0, 0.0, None
        return result

    def _on_retry(self, entry: Entry, outcome: Retry, now: float) -> None:
        self.failures += 1
        after = outcome.after
        delay = after if after is not None and after >= RETRY_AFTER_FLOOR else backoff(self.failures, self.deps.rng)
        self.retry_at = now + delay
        ks = self.schedule.kind(entry.kind) if entry.kind in SCHEDULED else None
        if ks is not None:
            self.schedule = self.schedule.with_kind(entry.kind, replace(
                ks, consecutive_failures=ks.consecutive_failures + 1, last_error=outcome.reason[:200]))
            self._save_schedule()
        if self.outage_since is None:
            self.outage_since = self.outage_summary_at = now
            self._warn("delivery.outage_started", reason=outcome.reason, retry_in=int(delay),
                       spool=self.spool.depth())
        elif now - self.outage_summary_at >= OUTAGE_SUMMARY_EVERY:  # quiet: a summary, not every attempt
            self.outage_summary_at = now
            self._warn("delivery.outage_continues", attempts=self.failures, seconds=int(now - self.outage_since),
                       spool=self.spool.depth(), reason=outcome.reason)
        self.refresh_license(now, Contact("unreachable", now, self.outage_since, outcome.reason[:200]))

    def _on_delivered(self, entry: Entry, sealed: Sealed, d: Delivered, now: float) -> None:
        self.last_skew = d.skew
        if abs(d.skew) > SKEW_LIMIT:
            self._warn("clock.skew", seconds=int(d.skew))
        kind = entry.kind
        self._log(f"{kind}.sent", seq=entry.seq, status=d.status)
        if kind not in SCHEDULED:
            return
        ks = self.schedule.kind(kind)
        due = ks.next_due
        hint = d.receipt_body.get("next_check_in" if kind == "license" else "next_in")
        if isinstance(hint, int) and hint > 0 and due is not None:
            due = max(due, int(now + min(hint, SERVER_INTERVAL_CAP)))  # a server can only lengthen it
        self.schedule = self.schedule.with_kind(kind, replace(
            ks, last_sent=int(now), next_due=due, consecutive_failures=0, last_error=None))
        if kind == "digest":
            if d.receipt_body.get("need_full"):
                self.schedule = replace(self.schedule, last_acked_root=None)
                self.schedule = self.schedule.with_kind("digest", replace(self.schedule.digest, next_due=int(now)))
            else:
                self.schedule = replace(self.schedule, last_acked_root=sealed.obj["body"]["root"])
        if kind == "license":
            self.write_license_status(d, now)
        else:
            self.refresh_license(now, Contact("delivered", now))
        self._save_schedule()

    # ---- license status (the platform reads it) ----

    def read_license_status(self) -> dict[str, Any]:
        """Return license-status.json, or {} when absent or unreadable."""
        try:
            return state.read_json(self.cfg.instance.state_dir / LICENSE_STATUS_FILE) or {}
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
        st, _file, _ = license_store.refresh(self.cfg, now, receipt=receipt, contact=contact,
                                             read=self.deps.world.read_license)
        self._log("license.state", state=st.state, clock_skew=st.clock_skew or None)
        return st

    def refresh_license(self, now: float, contact: Contact | None = None) -> Status:
        """Derive the license state now (recording contact if given); rewrite license-status.json on change.

        When the license file changed its verdict, the license check is made due at once.
        """
        before = (self.read_license_status().get("file") or {})
        st, file, written = license_store.refresh(self.cfg, now, contact=contact, read=self.deps.world.read_license)
        if written:
            self._log("license.state", state=st.state, clock_skew=st.clock_skew or None)
            if before and (before.get("license_id"), before.get("state")) != (file.license_id, file.state):
                self._log("license.file_changed", state=file.state)
                ks = self.schedule.kind("license")
                self.schedule = self.schedule.with_kind("license", replace(ks, next_due=int(now)))
                self._save_schedule()
        return st

    def license_status(self, now: float) -> Status:
        """Return the license state derived now, without writing anything."""
        return license_store.current(self.cfg, now, read=self.deps.world.read_license)[0]

    def cycle(self, now: float, kinds: Sequence[str]) -> FlushResult:
        """Produce kinds and flush the spool: one full cycle. Raises FluxError on state trouble."""
        self.produce(kinds, now)
        result = self.flush()
        if any(e.kind == "digest" and d.receipt_body.get("need_full") for e, d in result.delivered):
            self.produce(["digest"], self.deps.clock(), force_full=True)  # the server asked for the lists
            more = self.flush()
            result.delivered += more.delivered
            result.rejected += more.rejected
            result.retry = more.retry
        return result


__all__ = ["Deps", "Engine", "FlushResult", "FluxError", "backoff", "next_due"]
