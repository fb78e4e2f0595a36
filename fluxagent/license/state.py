"""The license state machine: a pure function from what is known to the state shown (docs/PROTOCOL.md §7).

Inputs: the local license file verdict, the last verified license receipt, the outcome of the
latest contact with the server, the time, `offline_grace`, and the latest time a state was
derived at, `seen_until` (so setting the clock back cannot bring an expired state back to life).
`seen_until` only grows, except that a fresh vendor-signed server time replaces it (`seen_after`):
otherwise one run with the clock a year ahead would spoil the state for a year. Output: one of
STATES, a `clock_skew` flag, reasons for people, and when the state will next change by itself.

Fail-open: the result is reported (license-status.json, `status`, systemd STATUS, metrics); it
never stops or degrades the platform. Rules, in order:

1. a receipt applies while the license file holds the license it held when the receipt arrived
   (after the file is replaced, the old verdict is ignored until the server answers again);
2. `revoked` from an applicable receipt wins; then no license file → `unlicensed`; a license file
   that fails verification → `invalid`; a server verdict `invalid`/`unlicensed` → that;
3. time: a receipt's `valid` lasts until its expires_at, then the server's grace_until gives
   `grace`, then `expired`; a server `grace` lasts until grace_until even when the file says
   expired; without an applicable receipt the file's own dates decide (`valid`/`expired`);
4. freshness, for `valid` only: a confirmation older than `offline_grace` → `grace`; otherwise a
   failed contact after the last confirmation → `offline`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fluxagent.license.file import LicenseFile
from fluxagent.timefmt import duration, utc_stamp

STATES = ("valid", "offline", "grace", "expired", "revoked", "invalid", "unlicensed")
SKEW_LIMIT = 300.0  # seconds between the local and the server clock that count as skew
BEHIND_TOLERANCE = 5.0  # receipt ts are whole seconds and travel: a few seconds behind is noise
CONTACT_OUTCOMES = ("none", "delivered", "unreachable", "rejected")


@dataclass(frozen=True)
class Receipt:
    """The last verified license receipt: the server's verdict and when it arrived."""

    state: str
    license_id: str | None
    expires_at: int | None
    grace_until: int | None
    next_check_in: int | None
    server_ts: int
    received_at: float  # local wall-clock time it was received (or imported)
    skew: float = 0.0  # server ts − local time at receipt; 0 for imported receipts
    source: str = "online"  # online | import
    for_license: str | None = None  # the license file's license_id when the receipt was recorded


@dataclass(frozen=True)
class Contact:
    """The outcome of the latest attempt to reach the server."""

    outcome: str = "none"  # none | delivered | unreachable | rejected
    at: float | None = None  # when that outcome was first seen
    since: float | None = None  # start of the current outage (unreachable/rejected)
    reason: str = ""


@dataclass(frozen=True)
class Status:
    """The derived license state, with reasons and when it next changes without new inputs."""

    state: str
    clock_skew: bool
    reasons: tuple[str, ...]
    license_id: str | None
    expires_at: int | None
    grace_until: int | None
    confirmed_at: int | None  # local time of the last applicable server confirmation
    next_change: int | None
    effective_now: int


def clock_skew(receipt: Receipt | None, now: float, seen_until: float | None) -> tuple[bool, list[str]]:
    """Return whether the local clock is skewed, and why: behind trusted time or off by >300 s."""
    why: list[str] = []
    if receipt is not None:
        if receipt.source == "online" and abs(receipt.skew) > SKEW_LIMIT:
            side = "behind" if receipt.skew > 0 else "ahead of"
            why.append(f"the local clock was {duration(receipt.skew)} {side} the server at the last check")
        if now < receipt.server_ts - BEHIND_TOLERANCE:
            why.append(f"the local clock is {duration(receipt.server_ts - now)} behind the last trusted server time")
    if seen_until is not None and now < seen_until - SKEW_LIMIT:
        why.append(f"the local clock went back {duration(seen_until - now)} since the license state was last derived")
    return bool(why), why


def applies(receipt: Receipt | None, file: LicenseFile) -> bool:
    """True when receipt was recorded while the license file held the license it holds now."""
    if receipt is None:
        return False
    return file.license_id is None or receipt.for_license is None or receipt.for_license == file.license_id


def server_phase(r: Receipt, t: float) -> tuple[str, int | None]:
    """Return the state a receipt gives at time t ('valid'/'grace'/'expired') and until when."""
    e, g = r.expires_at, r.grace_until
    if r.state == "valid" and (e is None or t < e):
        return "valid", e
    if r.state in ("valid", "grace") and g is not None and t < g:
        return "grace", g
    return "expired", None


def seen_after(seen_until: float | None, receipt: Receipt | None) -> float | None:
    """Return `seen_until` once receipt is recorded: an online receipt's server ts replaces it. Pure.

    An online receipt is fresh and trusted: a pinned vendor key signed it in answer to the request
    just sent (its `req` and `nonce`), so its ts is the server's time of this exchange, and a
    `seen_until` beyond it only shows that the local clock once ran ahead. An imported receipt may
    be days old, so it corrects nothing (derive still judges no earlier than its ts).
    """
    if receipt is not None and receipt.source == "online":
        return float(receipt.server_ts)
    return seen_until


def derive(file: LicenseFile, receipt: Receipt | None, contact: Contact, now: float, offline_grace: float,
           seen_until: float | None = None) -> Status:
    """Return the license state for these inputs. Pure; never raises for any input."""
    skew, reasons = clock_skew(receipt, now, seen_until)
    t = max([now, *([receipt.server_ts] if receipt else []), *([seen_until] if seen_until else [])])
    if t > now + BEHIND_TOLERANCE:
        reasons.append("dates are judged by the latest trusted time, not the local clock")
    use = applies(receipt, file)
    if receipt is not None and not use:
        reasons.append(f"the server's last verdict was on license {receipt.for_license}, the license file now"
                       f" holds {file.license_id}: waiting for the next check")
    r = receipt if use else None

    def out(state: str, why: str, until: int | None = None, *extra: int | None) -> Status:
        changes = [x for x in (until, *extra) if x is not None and x > t]
        return Status(state, skew, (why, *reasons), file.license_id or (r.license_id if r else None),
                      (r.expires_at if r and r.expires_at is not None else file.expires_at),
                      r.grace_until if r else None, int(r.received_at) if r else None,
                      min(changes) if changes else None, int(t))

    if r is not None and r.state == "revoked":
        return out("revoked", f"the license server revoked license {r.license_id}")
    if file.state == "unlicensed":
        return out("unlicensed", f"{file.reason}: install the license file the vendor issued")
    if file.state == "invalid":
        return out("invalid", file.reason)
    if r is not None and r.state in ("invalid", "unlicensed"):
        return out(r.state, f"the license server answered {r.state!r} for this instance")
    file_end = file.expires_at
    if r is None:
        if file_end is not None and t >= file_end:
            return out("expired", f"license file expired {duration(t - file_end)} ago: install a renewed license")
        until, why = file_end, "license file verified; not yet confirmed by the license server"
    else:
        phase, until = server_phase(r, t)
        if phase == "expired":
            return out("expired", "the license expired by the server's last verdict"
                       + (f" (grace ended {duration(t - r.grace_until)} ago)" if r.grace_until else ""))
        if phase == "grace":
            filenote = " (the license file has expired)" if file_end is not None and t >= file_end else ""
            return out("grace", f"the license server granted grace until {utc_stamp(until or 0)}{filenote}", until)
        why = "license confirmed by the license server"
    # phase valid: how fresh is the confirmation?
    anchor = r.received_at if r is not None else (contact.since if contact.outcome in ("unreachable", "rejected")
                                                   else None)
    failing = contact.outcome in ("unreachable", "rejected") and (r is None or (contact.at or 0) >= r.received_at)
    if anchor is not None and (r is not None or failing):
        fresh_until = int(anchor + offline_grace)
        if t >= fresh_until:
            return out("grace", f"the license server has not confirmed the license for {duration(t - anchor)}"
                       f" (offline_grace {duration(offline_grace)}): restore the connection to the server", until)
        if failing:
            what = "unreachable" if contact.outcome == "unreachable" else "rejecting license checks"
            return out("offline", f"the license server is {what}"
                       + (f" since {utc_stamp(contact.since)}" if contact.since else "")
                       + (f": {contact.reason}" if contact.reason else "")
                       + f"; this state holds until {utc_stamp(fresh_until)}", until, fresh_until)
        return out("valid", why, until, fresh_until)
    return out("valid", why, until)


__all__ = ["STATES", "Contact", "Receipt", "Status", "applies", "clock_skew", "derive", "seen_after", "server_phase"]
