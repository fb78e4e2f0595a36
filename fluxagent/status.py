"""Read-only views of the state directory for `status` and `log` (safe while the daemon runs)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fluxagent import license_store, state
from fluxagent.config import Config
from fluxagent.errors import StateError
from fluxagent.ledger import Ledger, LedgerEntry

KINDS = ("license", "heartbeat", "digest", "credentials")


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


def collect_status(cfg: Config, now: float | None = None) -> dict[str, Any]:
    """Return the agent's status as a JSON-ready dict; raises StateError on unreadable state."""
    t = time.time() if now is None else now
    sd = cfg.instance.state_dir
    lic, _stored, _file = license_store.current(cfg, t)
    sched = state.load_schedule(sd)
    kinds = {}
    not_sent = state.load_source_errors(sd)
    last = _last_per_kind(sd / "ledger")
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
        "state_dir": str(sd),
        "now": int(t),
    }


def _when(ts: Any, now: int) -> str:
    if not isinstance(ts, int):
        return "never"
    d = ts - now
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))
    return f"{stamp} ({'in ' if d >= 0 else ''}{_ago(abs(d))}{'' if d >= 0 else ' ago'})"


def _ago(s: int) -> str:
    if s >= 86400:
        return f"{s // 86400}d{(s % 86400) // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60}m"
    return f"{s // 60}m" if s >= 60 else f"{s}s"


def status_text(st: dict[str, Any]) -> str:
    """Return `status` for people."""
    now = st["now"]
    lic = st["license"]
    lines = [
        f"license:   {lic['state']}"
        + (f" ({lic['license_id']})" if lic.get("license_id") else "")
        + (f", expires {_when(lic['expires_at'], now)}" if lic.get("expires_at") else ""),
        *(f"           {why}" for why in lic.get("reasons", [])),
        f"clock:     {'SKEWED (local clock disagrees with the server by >300 s)' if st['clock_skew'] else 'ok'}",
    ]
    for k, v in st["kinds"].items():
        err = f"; {v['consecutive_failures']} failures, last: {v['last_error']}" if v["consecutive_failures"] else ""
        if v.get("not_sent"):
            ns = v["not_sent"]
            err += f"\n{'':<11}NOT SENT since {_when(ns.get('since'), now)}: {ns.get('code')}: {ns.get('error')}"
        lines.append(
            f"{k + ':':<10} last delivered {_when(v['last_delivered'], now)}; next due {_when(v['next_due'], now)}{err}"
        )
    sp = st["spool"]
    lines.append(
        f"spool:     {sp['depth']} unsent ({sp['bytes']} bytes); superseded {sp['superseded']}, "
        f"dropped {sp['dropped_overflow']}, corrupt {sp['corrupt']}"
    )
    return "\n".join(lines)


def ledger_lines(entries: list[LedgerEntry]) -> str:
    """Return one line per ledger entry for people."""
    rows = []
    for e in entries:
        stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(e.ts))
        http = f" http {e.http_status}" if e.http_status else ""
        rows.append(
            f"{e.n:>6}  {stamp}  {e.event:<10} {e.kind:<11} seq {e.seq!s:<6} {e.outcome}{http}"
            + (f"  ({e.detail})" if e.detail else "")
        )
    return "\n".join(rows) if rows else "(the ledger is empty)"


def ledger_entry_text(e: LedgerEntry) -> str:
    """Return one entry in full, with its exact payload, for people."""
    head = json.dumps({k: v for k, v in e.as_dict().items() if k != "payload"}, indent=2, sort_keys=True)
    payload = e.payload if e.payload is not None else "(none)"
    return f"{head}\nexact payload ({len((e.payload or '').encode())} bytes):\n{payload}"
