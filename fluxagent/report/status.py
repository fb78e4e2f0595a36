"""The `status` rendering: the collected status mapping in, text out (pure)."""

from __future__ import annotations

import time
from typing import Any


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
    sc = st.get("schema")
    if sc:
        if sc.get("error"):
            lines.append(f"schema:    running {sc['running']}; NO USABLE APPROVAL, nothing is sent: {sc['error']}")
            if sc.get("fix"):
                lines.append(f"{'':<11}fix: {sc['fix']}")
        elif sc.get("pending"):
            held = f"; held back: {', '.join(sc['held_back'])}" if sc.get("held_back") else ""
            lines.append(f"schema:    running {sc['running']}, approved {sc['approved']}: APPROVAL PENDING, "
                         f"{len(sc['withheld'])} field(s) withheld{held} (`fluxagent schema --diff`)")
        else:
            lines.append(f"schema:    running {sc['running']}, approved {sc['approved']}")
    sp = st["spool"]
    lines.append(
        f"spool:     {sp['depth']} unsent ({sp['bytes']} bytes); superseded {sp['superseded']}, "
        f"dropped {sp['dropped_overflow']}, corrupt {sp['corrupt']}"
    )
    return "\n".join(lines)
