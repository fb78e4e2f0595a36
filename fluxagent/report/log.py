"""Ledger renderings for `fluxagent log` and `status`: entries in, text out (pure)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from fluxagent.timefmt import utc_stamp

if TYPE_CHECKING:  # the type only: this module does no I/O
    from fluxagent.statedir.ledger import LedgerEntry


def ledger_lines(entries: list[LedgerEntry]) -> str:
    """Return one line per ledger entry for people."""
    rows = []
    for e in entries:
        stamp = utc_stamp(e.ts)
        http = f" http {e.http_status}" if e.http_status else ""
        rows.append(
            f"{e.n:>6}  {stamp}  {e.event:<10} {e.kind:<11} seq {e.seq!s:<6} {e.outcome}{http}"
            + (f"  ({e.detail})" if e.detail else "")
        )
    return "\n".join(rows) if rows else "(the ledger is empty)"


def ledger_entry_text(e: LedgerEntry) -> str:
    """Return one entry in full, with its exact payload, for people."""
    head = json.dumps({k: v for k, v in e.as_dict().items() if k != "payload"}, indent=2, sort_keys=True)
    if e.payload is None and e.summary is not None:
        return (f"{head}\npayload not kept: a digest is recorded by its payload_sha256 and the sizes of its"
                " token lists (summary above)")
    payload = e.payload if e.payload is not None else "(none)"
    return f"{head}\nexact payload ({len((e.payload or '').encode())} bytes):\n{payload}"
