"""Read-only views of the state directory for `status` and `log` (safe while the daemon runs)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fluxagent.config import Config
from fluxagent.errors import FluxError, StateError
from fluxagent.kinds import KINDS
from fluxagent.license import record as license_store
from fluxagent.schema.approval import load_policy
from fluxagent.schema.policy import Policy
from fluxagent.statedir import state
from fluxagent.statedir.ledger import Ledger, parse_line


def _spool_facts(spool_dir: Path) -> dict[str, Any]:
    new = spool_dir / "new"
    names = sorted(p.name for p in new.iterdir()) if new.is_dir() else []
    by_kind: dict[str, int] = {}
    for name in names:
        kind = name.partition("-")[2].removesuffix(".json")
        by_kind[kind] = by_kind.get(kind, 0) + 1
    try:
        counters = state.read_json(spool_dir / "counters.json") or {}
    except StateError:
        counters = {}
    return {
        "depth": len(names),
        "by_kind": by_kind,
        "bytes": sum((new / n).stat().st_size for n in names if (new / n).exists()),
        "superseded": counters.get("superseded", 0),
        "dropped_overflow": counters.get("dropped_overflow", 0),
        "corrupt": counters.get("corrupt", 0),
    }


def _last_per_kind(ledger_dir: Path, limit: int = 5000) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if not ledger_dir.is_dir():
        return out
    ledger = Ledger(ledger_dir, readonly=True)
    for i, e in enumerate(ledger.entries(reverse=True)):
        if e.event in ("sent", "imported") and e.kind not in out:  # imported: an air-gapped delivery
            out[e.kind] = {"ts": e.ts, "seq": e.seq, "ledger_n": e.n}
        if len(out) == len(KINDS) or i >= limit:
            break
    return out


class LastDelivered:
    """The last delivery of each kind, kept current by parsing only the ledger lines appended since
    the previous call: the daemon writes metrics after every wake-up, and a full scan each time
    would cost more and more as the ledger grows. A new newest segment means one full scan."""

    def __init__(self, ledger_dir: Path) -> None:
        self.dir = ledger_dir
        self.segment: Path | None = None
        self.offset = 0
        self.last: dict[str, dict[str, Any]] = {}

    def get(self) -> dict[str, dict[str, Any]]:
        """Return {kind: {ts, seq, ledger_n}} as `_last_per_kind` does; raises StateError on a bad ledger."""
        segs = sorted(self.dir.glob("[0-9]" * 12 + ".jsonl")) if self.dir.is_dir() else []
        if not segs:
            self.segment, self.offset, self.last = None, 0, {}
            return self.last
        newest = segs[-1]
        try:
            size = newest.stat().st_size
            if newest != self.segment or size < self.offset:
                self.last, self.segment, self.offset = _last_per_kind(self.dir), newest, 0
            if size > self.offset:
                with newest.open("rb") as f:
                    f.seek(self.offset)
                    data = f.read(size - self.offset)
                cut = data.rfind(b"\n") + 1  # a line still being written is read next time
                for line in data[:cut].split(b"\n")[:-1]:
                    e = parse_line(line)
                    if e.event in ("sent", "imported"):
                        self.last[e.kind] = {"ts": e.ts, "seq": e.seq, "ledger_n": e.n}
                self.offset += cut
        except OSError as exc:
            raise StateError(f"cannot read the ledger in {self.dir}: {exc.strerror or exc}") from exc
        except ValueError as exc:
            self.segment = None  # scan in full next time
            raise StateError(f"ledger segment {newest.name} holds a bad entry: {exc}",
                             hint="run `fluxagent log --verify` to locate it") from None
        return self.last


def _daemon(sd: Path) -> dict[str, Any]:
    """Return the supervisor's record (supervisor.json) and whether that process still runs."""
    try:
        doc = state.read_json(sd / "supervisor.json") or {}
    except StateError:
        doc = {}
    pid = doc.get("pid")
    running = False
    if isinstance(pid, int) and doc.get("running"):
        try:
            holder = (sd / "lock").read_text().strip()
        except OSError:
            holder = ""
        running = holder == str(pid) and Path(f"/proc/{pid}").exists()  # the lock file names its holder
    last = doc.get("last_worker")
    return {"running": running, "pid": pid if running else None, "started": doc.get("started") if running else None,
            "last_pid": pid, "failed_steps": doc.get("failed_steps", 0),
            "last_worker": last if isinstance(last, dict) else None}


def schema_status(cfg: Config, policy_of: Callable[[Config], Policy] = load_policy) -> dict[str, Any]:
    """Return the schema part of the status: running and approved versions, pending, withheld, any error."""
    from fluxagent.schema.shipped import running

    try:
        policy = policy_of(cfg)
    except FluxError as exc:
        run = running()
        return {"running": run.name, "running_fingerprint": run.fingerprint, "approved": None,
                "approved_fingerprint": None, "pending": False, "withheld": [], "held_back": [],
                "error": exc.message, "fix": exc.hint}
    return {
        "running": policy.running.name, "running_fingerprint": policy.running.fingerprint,
        "approved": policy.approved.name, "approved_fingerprint": policy.approved.fingerprint,
        "pending": policy.pending, "withheld": [f"{f.kind} body.{f.path}" for f in policy.withheld],
        "held_back": [k for k in KINDS if policy.held_back(k)], "error": None, "fix": None,
    }


def collect_status(cfg: Config, now: float | None = None, *, last_delivered: LastDelivered | None = None,
                   policy_of: Callable[[Config], Policy] = load_policy) -> dict[str, Any]:
    """Return the agent's status as a JSON-ready dict; raises StateError on unreadable state.

    last_delivered: the daemon's incremental reader of the ledger (default: a full scan);
    policy_of: reads the approved schema (a bad approval is shown, not raised).
    """
    t = time.time() if now is None else now
    sd = cfg.instance.state_dir
    lic, _stored, _file = license_store.current(cfg, t)
    # shown as the next run will see it: a timer set while the clock ran ahead is due now
    sched, _clamped = state.clamp_schedule(state.load_schedule(sd), t, cfg.schedule.spans())
    kinds = {}
    not_sent = state.load_source_errors(sd)
    last = last_delivered.get() if last_delivered is not None else _last_per_kind(sd / "ledger")
    for k in ("license", "heartbeat", "digest"):
        ks = sched.kind(k)
        kinds[k] = {
            "last_delivered": last.get(k, {}).get("ts"),
            "next_due": ks.next_due,
            "consecutive_failures": ks.consecutive_failures,
            "last_error": ks.last_error,
            "not_sent": not_sent.get(k),  # {error, code, since} while a failing source keeps it back
        }
    return {
        "license": {
            "state": lic.state,
            "license_id": lic.license_id,
            "expires_at": lic.expires_at,
            "grace_until": lic.grace_until,
            "checked_at": lic.confirmed_at,
            "reasons": list(lic.reasons),
            "next_change": lic.next_change,
        },
        "clock_skew": lic.clock_skew,
        "kinds": kinds,
        "spool": _spool_facts(sd / "spool"),
        "daemon": _daemon(sd),
        "schema": schema_status(cfg, policy_of),
        "state_dir": str(sd),
        "now": int(t),
    }










