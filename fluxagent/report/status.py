"""The `status` rendering: the collected status mapping in, text out (pure)."""

from __future__ import annotations

from typing import Any

from fluxagent.timefmt import relative


def status_text(st: dict[str, Any]) -> str:
    """Return `status` for people."""
    now = st["now"]
    lic = st["license"]
    lines = [
        f"license:   {lic['state']}"
        + (f" ({lic['license_id']})" if lic.get("license_id") else "")
        + (f", expires {relative(lic['expires_at'], now)}" if lic.get("expires_at") else ""),
        *(f"           {why}" for why in lic.get("reasons", [])),
        f"clock:     {'SKEWED (local clock disagrees with the server by >300 s)' if st['clock_skew'] else 'ok'}",
    ]
    for k, v in st["kinds"].items():
        err = f"; {v['consecutive_failures']} failures, last: {v['last_error']}" if v["consecutive_failures"] else ""
        if v.get("not_sent"):
            ns = v["not_sent"]
            err += f"\n{'':<11}NOT SENT since {relative(ns.get('since'), now)}: {ns.get('code')}: {ns.get('error')}"
        last, due = relative(v["last_delivered"], now), relative(v["next_due"], now)
        lines.append(f"{k + ':':<10} last delivered {last}; next due {due}{err}")
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
    lines += _daemon_lines(st.get("daemon") or {}, now)
    return "\n".join(lines)


def _daemon_lines(d: dict[str, Any], now: int) -> list[str]:
    """Return the daemon's lines: the supervisor (running or not) and its last worker."""
    if d.get("running"):
        out = [f"daemon:    running, pid {d.get('pid')}, since {relative(d.get('started'), now)}"]
    else:
        out = ["daemon:    not running"]
    if d.get("failed_steps"):
        out[0] += f"; {d['failed_steps']} failed steps in a row"
    w = d.get("last_worker")
    if isinstance(w, dict):
        out.append(f"worker:    last {w.get('mode')} (pid {w.get('pid')}) {w.get('outcome')}, "
                   f"ended {relative(w.get('ended'), now)}")
    return out
