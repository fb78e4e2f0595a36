"""Writes every new approval to the ledger once, and says once when a wider version awaits approval.

The approval file belongs to root and the ledger to the service user, so `schema --approve` only
writes the file; the agent records the approval in its ledger when it first reads it (kept in
`<state_dir>/schema.json`: what was last ledgered and which pending approval was last announced).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fluxagent.errors import StateError
from fluxagent.kinds import KINDS
from fluxagent.schema.policy import Policy
from fluxagent.statedir import state
from fluxagent.statedir.ledger import Ledger

FILE = "schema.json"
Emit = Callable[..., None]


def _fields(policy: Policy) -> list[str]:
    return [f"{f.kind} {f.path}" for f in policy.withheld]


def note_policy(state_dir: Path, ledger: Ledger, policy: Policy, now: int, log: Emit, warn: Emit) -> None:
    """Ledger policy's approval if not yet ledgered; warn once per pending (running, approved) pair.

    Raises StateError when the state file or the ledger cannot be written.
    """
    path = state_dir / FILE
    try:
        seen: dict[str, Any] = state.read_json(path) or {}
    except StateError:  # a damaged note only means an approval may be ledgered twice
        seen = {}
    changed = False
    rec = policy.record
    if rec is not None:
        key = [rec.version.fingerprint, rec.at]
        if seen.get("ledgered") != key:
            stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(rec.at))
            ledger.append(now=now, event="schema_approved", kind="schema", outcome="approved",
                          detail=f"{rec.version.name} {rec.version.fingerprint} approved by {rec.by} at {stamp} "
                                 f"({rec.via})")
            log("schema.approved", version=rec.version.name, fingerprint=rec.version.fingerprint, by=rec.by)
            seen["ledgered"] = key
            changed = True
    pair = [policy.running.fingerprint, policy.approved.fingerprint] if policy.pending else None
    if seen.get("pending") != pair:
        if pair is not None:
            held = [k for k in KINDS if policy.held_back(k)]
            warn("schema.approval_pending", running=policy.running.name, approved=policy.approved.name,
                 withheld=_fields(policy), held_back=held or None,
                 fix="review `fluxagent schema --diff`, then `sudo fluxagent schema --approve`")
        seen["pending"] = pair
        changed = True
    if changed:
        state.write_json(path, seen)
